-- pg-ledger: the ledger of servers/ledger-writer/API.md as a PostgreSQL schema (PostgreSQL 14 or later).
--
-- Idempotent: pg-ledger applies it at every start (CREATE ... IF NOT EXISTS, CREATE OR REPLACE).
--
-- Types. A 128-bit id is a `uuid`: 16 bytes, fixed width, compared with memcmp, and sent over the wire in binary as
-- the id's big-endian bytes, so uuid order is the ids' numeric order (lock order below relies on it). That is
-- smaller and faster to compare and index than numeric(39,0), and one column instead of two bigints. Amounts and
-- balances are u128 in the API, so they are numeric(39,0) with CHECKs for 0 ..= u128::MAX (bigint would overflow at
-- 2^63). `user_data` is opaque 128 bits: a uuid too. The nil uuid stands for a zero id (`pending_id` of a transfer
-- that is not a post or void). `code` and `flags` are u16: integer with range CHECKs. `ts` is the commit
-- timestamp in ns since the Unix epoch.
--
-- Invariants the database itself enforces, whoever writes:
--   * balances never below zero or above u128::MAX (CHECK), a transfer's two accounts differ (CHECK);
--   * double entry: every statement that changes account balances changes, per currency, the debits by exactly what
--     it changes the credits, posted and pending alike (statement-level triggers over the transition tables: one
--     cheap check per batch, since create_transfers writes all balances of a batch in one UPDATE), so per currency
--     Σ debits = Σ credits at every commit;
--   * ids are unique (primary keys).
-- The business rules of API.md (result codes, linked chains, two-phase) are in create_accounts/create_transfers.

CREATE TABLE IF NOT EXISTS accounts (
    id              uuid          PRIMARY KEY,
    debits_pending  numeric(39,0) NOT NULL,
    debits_posted   numeric(39,0) NOT NULL,
    credits_pending numeric(39,0) NOT NULL,
    credits_posted  numeric(39,0) NOT NULL,
    user_data       uuid          NOT NULL,
    currency        char(3)       NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    code            integer       NOT NULL CHECK (code BETWEEN 1 AND 65535),
    -- bit 0 linked, bit 1 debits_must_not_exceed_credits, bit 2 credits_must_not_exceed_debits (not both)
    flags           integer       NOT NULL CHECK (flags BETWEEN 0 AND 7 AND (flags & 6) <> 6),
    ts              bigint        NOT NULL CHECK (ts > 0),
    CONSTRAINT balances_are_u128 CHECK (
        debits_pending  BETWEEN 0 AND 340282366920938463463374607431768211455 AND
        debits_posted   BETWEEN 0 AND 340282366920938463463374607431768211455 AND
        credits_pending BETWEEN 0 AND 340282366920938463463374607431768211455 AND
        credits_posted  BETWEEN 0 AND 340282366920938463463374607431768211455)
) WITH (fillfactor = 70); -- room on each page for HOT updates of the balances (no indexed column changes)

CREATE TABLE IF NOT EXISTS transfers (
    id                uuid          PRIMARY KEY,
    debit_account_id  uuid          NOT NULL,
    credit_account_id uuid          NOT NULL CHECK (credit_account_id <> debit_account_id),
    amount            numeric(39,0) NOT NULL CHECK (amount BETWEEN 0 AND 340282366920938463463374607431768211455),
    pending_id        uuid          NOT NULL,
    user_data         uuid          NOT NULL,
    timeout_s         bigint        NOT NULL CHECK (timeout_s BETWEEN 0 AND 4294967295),
    currency          char(3)       NOT NULL,  -- equal to both accounts' (checked by create_transfers)
    code              integer       NOT NULL CHECK (code BETWEEN 1 AND 65535),
    -- bit 0 linked, bit 1 pending, bit 2 post_pending_transfer, bit 3 void_pending_transfer
    flags             integer       NOT NULL CHECK (flags BETWEEN 0 AND 15),
    ts                bigint        NOT NULL CHECK (ts > 0),
    -- 0 not a pending transfer, 1 pending, 2 posted, 3 voided, 4 expired
    status            smallint      NOT NULL CHECK (status BETWEEN 0 AND 4)
) WITH (fillfactor = 90); -- room for the HOT update of a pending transfer's status

-- An account's transfers in time order (GET /accounts/{id}/transfers of the API; the ledger keeps the same
-- per-account history). Not used by the benchmark's hot path, but a real ledger schema has them, so they are paid.
CREATE INDEX IF NOT EXISTS transfers_debit_account_ts ON transfers (debit_account_id, ts);
CREATE INDEX IF NOT EXISTS transfers_credit_account_ts ON transfers (credit_account_id, ts);

-- Pending transfers with a timeout, by deadline (only those: the benchmark's pendings have none, so this costs them
-- nothing). expire_pending_transfers() releases the expired ones.
CREATE TABLE IF NOT EXISTS pending_timeouts (
    id       uuid   PRIMARY KEY,
    deadline bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_timeouts_deadline ON pending_timeouts (deadline);

-- ---------------------------------------------------------------------------------------------------------------
-- Double entry, enforced by the database: per statement and currency, Δ debits = Δ credits (posted and pending).

CREATE OR REPLACE FUNCTION accounts_double_entry_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (
        SELECT 1
          FROM (SELECT currency, debits_posted - credits_posted AS posted, debits_pending - credits_pending AS pending
                  FROM new_rows
                UNION ALL
                SELECT currency, credits_posted - debits_posted, credits_pending - debits_pending
                  FROM old_rows) d
         GROUP BY currency
        HAVING sum(posted) <> 0 OR sum(pending) <> 0)
    THEN
        RAISE EXCEPTION 'double entry violated: a statement changed debits and credits of a currency by different amounts'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION accounts_double_entry_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (
        SELECT 1 FROM new_rows
         GROUP BY currency
        HAVING sum(debits_posted - credits_posted) <> 0 OR sum(debits_pending - credits_pending) <> 0)
    THEN
        RAISE EXCEPTION 'double entry violated: new accounts with unbalanced balances'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER accounts_double_entry_update
    AFTER UPDATE ON accounts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION accounts_double_entry_update();
CREATE OR REPLACE TRIGGER accounts_double_entry_insert
    AFTER INSERT ON accounts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION accounts_double_entry_insert();

-- ---------------------------------------------------------------------------------------------------------------
-- create_accounts: one batch of POST /accounts in one call (one round trip, one transaction).
--
-- The adapter has already checked what needs no state (API.md's order: timestamp, reserved, flags, id, ...): p_pre
-- is that check's result code per item (0 = passed). p_dup[i] is the 1-based index of the previous item of the
-- batch with the same id (0 = none). Returns a result code and a timestamp per item.

CREATE OR REPLACE FUNCTION create_accounts(
    p_id uuid[], p_user_data uuid[], p_currency text[], p_code integer[], p_flags integer[],
    p_pre integer[], p_dup integer[],
    OUT r_code integer[], OUT r_ts bigint[])
LANGUAGE plpgsql
-- Generic plans: re-planning every statement with the batch's arrays inlined as constants costs more than it gains.
-- Every read is a key lookup, so no sequential scans (a generic plan made while a table was small would keep one).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $fn$
DECLARE
    n         integer := coalesce(cardinality(p_id), 0);
    base_ts   bigint  := (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint;
    applied   boolean[];
    n_applied integer := 0;
    e_found boolean[]; e_user_data uuid[]; e_currency text[]; e_code integer[]; e_flags integer[]; e_ts bigint[];
    v_chain   integer := 0;
    v_broken  boolean := false;
    v_linked  boolean;
    v_code    integer;
    i integer;
    j integer;
    v_inserted bigint;
BEGIN
    -- Arrays are set with SELECT INTO: PL/pgSQL then keeps them in expanded form, where an element read or write is
    -- O(1) (a plain `:=` of an expression may leave a flat array that every element write copies whole).
    SELECT array_fill(0, ARRAY[n]), array_fill(0::bigint, ARRAY[n]), array_fill(false, ARRAY[n])
      INTO r_code, r_ts, applied;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- Accounts that already exist with the batch's ids, aligned with the items.
    SELECT array_agg(s.found), array_agg(s.user_data), array_agg(s.currency), array_agg(s.code), array_agg(s.flags),
           array_agg(s.ts)
      INTO e_found, e_user_data, e_currency, e_code, e_flags, e_ts
      FROM (SELECT a.id IS NOT NULL AS found, a.user_data, a.currency::text AS currency, a.code, a.flags, a.ts
              FROM unnest(p_id) WITH ORDINALITY u(id, ord)
              LEFT JOIN accounts a ON a.id = u.id
             ORDER BY u.ord) s;

    FOR i IN 1 .. n LOOP
        v_linked := (p_flags[i] & 1) <> 0;
        IF v_chain = 0 AND v_linked THEN
            v_chain := i;
        END IF;
        IF v_linked AND i = n THEN
            v_code := 2;                                   -- linked_event_chain_open
        ELSIF v_broken THEN
            v_code := 1;                                   -- linked_event_failed
        ELSIF p_pre[i] <> 0 THEN
            v_code := p_pre[i];
        ELSE
            j := p_dup[i];
            WHILE j > 0 AND NOT applied[j] LOOP
                j := p_dup[j];
            END LOOP;
            IF j > 0 THEN                                  -- created earlier in this batch
                IF p_user_data[i] = p_user_data[j] AND p_currency[i] = p_currency[j] AND p_code[i] = p_code[j]
                   AND p_flags[i] = p_flags[j] THEN
                    v_code := 3;
                    r_ts[i] := r_ts[j];
                ELSE
                    v_code := 4;
                END IF;
            ELSIF e_found[i] THEN
                IF p_user_data[i] = e_user_data[i] AND p_currency[i] = e_currency[i] AND p_code[i] = e_code[i]
                   AND p_flags[i] = e_flags[i] THEN
                    v_code := 3;
                    r_ts[i] := e_ts[i];
                ELSE
                    v_code := 4;
                END IF;
            ELSE
                v_code := 0;
                applied[i] := true;
                n_applied := n_applied + 1;
                r_ts[i] := base_ts + i;
            END IF;
        END IF;
        r_code[i] := v_code;
        IF v_chain > 0 THEN
            IF NOT v_broken AND v_code NOT IN (0, 3) THEN
                FOR j IN v_chain .. i - 1 LOOP
                    IF applied[j] THEN
                        applied[j] := false;
                        n_applied := n_applied - 1;
                    END IF;
                    r_code[j] := 1;
                    r_ts[j] := 0;
                END LOOP;
                v_broken := true;
            END IF;
            IF NOT v_linked THEN
                v_chain := 0;
                v_broken := false;
            END IF;
        END IF;
    END LOOP;

    IF n_applied > 0 THEN
        INSERT INTO accounts (id, debits_pending, debits_posted, credits_pending, credits_posted, user_data, currency,
                              code, flags, ts)
        SELECT u.id, 0, 0, 0, 0, u.ud, u.cur, u.cd, u.fl, r_ts[u.ord]
          FROM unnest(p_id, p_user_data, p_currency, p_code, p_flags) WITH ORDINALITY u(id, ud, cur, cd, fl, ord)
         WHERE applied[u.ord]
         ORDER BY u.id
        ON CONFLICT (id) DO NOTHING;
        GET DIAGNOSTICS v_inserted = ROW_COUNT;
        IF v_inserted <> n_applied THEN
            -- Another transaction created one of these ids after our check: the adapter retries the batch.
            RAISE EXCEPTION 'an account id of the batch was created concurrently' USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------------------
-- create_transfers: one batch of POST /transfers in one call (one round trip, one transaction).
--
-- Set-based: a fixed number of statements per batch whatever its size. It locks the pending transfers the batch
-- posts or voids, then every account it touches (each set in id order, pendings before accounts, the same order
-- in every transaction, so batches never deadlock), reads them into arrays, applies the items one by one in
-- memory with the rules of API.md, and writes the outcome with one INSERT (transfers), one UPDATE (the resolved
-- pendings' status) and one UPDATE (balances; the double-entry trigger checks it). Items need no subtransaction:
-- an item is checked before it changes anything, and a failing linked chain is undone in memory.
--
-- Inputs from the adapter (which parses the records and does the stateless checks):
--   p_id .. p_flags  the items' fields (zero ids as the nil uuid, a zero currency as '');
--   p_pre            the stateless check's result code per item (0 = passed);
--   p_dup            1-based index of the previous item with the same id (0 = none);
--   p_pref           post/void: 1-based index of the latest earlier item whose id is this item's pending_id;
--   p_acc            the distinct nonzero account ids the items name; p_dix/p_cix: per item, the 1-based index of
--                    its debit/credit account in p_acc (0 = zero id);
--   p_pend           the distinct pending_ids of the posts and voids; p_pix: per item, its index in p_pend.
-- Returns a result code and a timestamp (the stored record's, for ok and exists) per item.

CREATE OR REPLACE FUNCTION create_transfers(
    p_id uuid[], p_debit uuid[], p_credit uuid[], p_amount numeric[], p_pending_id uuid[], p_user_data uuid[],
    p_timeout bigint[], p_currency text[], p_code integer[], p_flags integer[],
    p_pre integer[], p_dup integer[], p_pref integer[],
    p_acc uuid[], p_dix integer[], p_cix integer[], p_pend uuid[], p_pix integer[],
    OUT r_code integer[], OUT r_ts bigint[])
LANGUAGE plpgsql
-- Generic plans: re-planning every statement with the batch's arrays inlined as constants costs more than it gains.
-- Every read is a key lookup (`id = ANY (array)`), so no sequential scans: a generic plan made while a table was
-- small would otherwise keep scanning it whole after it has grown.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $fn$
DECLARE
    umax      CONSTANT numeric := 340282366920938463463374607431768211455;
    nil       CONSTANT uuid    := '00000000-0000-0000-0000-000000000000';
    n         integer := coalesce(cardinality(p_id), 0);
    base_ts   bigint  := (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint;
    -- the accounts to lock: p_acc, plus the pendings' accounts
    acc       uuid[]  := coalesce(p_acc, '{}');
    -- the locked accounts (a_*, sorted by id; amap: p_acc index -> a_* index), balances changing as items apply
    na        integer := 0;
    a_id uuid[]; a_cur text[]; a_flags integer[];
    a_dp numeric[]; a_dpo numeric[]; a_cp numeric[]; a_cpo numeric[];
    a_dirty   boolean[];
    amap      integer[];
    -- the stored pending transfers of p_pend (q_*; qmap: p_pend index -> q_* index); q_status changes as the batch
    -- posts and voids them
    np        integer := coalesce(cardinality(p_pend), 0);
    nq        integer := 0;
    q_id uuid[]; q_debit uuid[]; q_credit uuid[]; q_amount numeric[]; q_cur text[]; q_flags integer[];
    q_ts bigint[]; q_timeout bigint[]; q_status integer[]; q_status0 integer[]; q_dix integer[]; q_cix integer[];
    qmap      integer[];
    -- transfers that already exist with the items' ids (e_*; emap: item -> e_* index)
    ne        integer := 0;
    e_id uuid[]; e_debit uuid[]; e_credit uuid[]; e_amount numeric[]; e_pending_id uuid[]; e_user_data uuid[];
    e_timeout bigint[]; e_cur text[]; e_code integer[]; e_flags integer[]; e_ts bigint[]; e_pamount numeric[];
    emap      integer[];
    x integer;
    -- per item: applied or not, the record to store, its effect
    applied   boolean[];
    n_applied integer := 0;
    s_debit uuid[]; s_credit uuid[]; s_amount numeric[]; s_cur text[]; s_status integer[];
    k_d integer[]; k_c integer[];      -- indexes of the accounts it changed
    k_pamt numeric[];                   -- post/void: the reserved amount it released
    k_slot integer[];                   -- post/void: > 0 slot in p_pend, < 0 minus the in-batch pending's index
    any_timeout boolean := false;
    v_chain   integer := 0;
    v_broken  boolean := false;
    v_linked  boolean;
    v_flags   integer;
    v_code    integer;
    v_same    boolean;
    v_post    boolean;
    i integer; j integer; k integer; d integer; c integer; v_slot integer;
    amt numeric; nd numeric; nc numeric; v_amount numeric;
    pv_found boolean; pv_debit uuid; pv_credit uuid; pv_amount numeric; pv_cur text; pv_flags integer;
    pv_ts bigint; pv_timeout bigint; pv_status integer; pv_d integer; pv_c integer;
    v_inserted bigint;
BEGIN
    -- Arrays are set with SELECT INTO: PL/pgSQL then keeps them in expanded form, where an element read or write is
    -- O(1) (a plain `:=` of an expression may leave a flat array that every element write copies whole).
    SELECT array_fill(0, ARRAY[n]), array_fill(0::bigint, ARRAY[n]) INTO r_code, r_ts;
    IF n = 0 THEN
        RETURN;
    END IF;
    SELECT array_fill(false, ARRAY[n]), p_debit, p_credit, p_amount, p_currency, array_fill(0, ARRAY[n]),
           array_fill(0, ARRAY[n]), array_fill(0, ARRAY[n]), array_fill(NULL::numeric, ARRAY[n]), array_fill(0, ARRAY[n])
      INTO applied, s_debit, s_credit, s_amount, s_cur, s_status, k_d, k_c, k_pamt, k_slot;

    -- Every read below is one index scan (`id = ANY (...)`), never a join against a whole table: rows come back
    -- sorted by id into arrays, and small maps (joins of two in-memory arrays) say where each item's row is.

    -- 1. Lock and read the pending transfers the batch posts or voids.
    IF np > 0 THEN
        SELECT array_agg(s.id), array_agg(s.debit_account_id), array_agg(s.credit_account_id), array_agg(s.amount),
               array_agg(s.currency), array_agg(s.flags), array_agg(s.ts), array_agg(s.timeout_s), array_agg(s.status)
          INTO q_id, q_debit, q_credit, q_amount, q_cur, q_flags, q_ts, q_timeout, q_status
          FROM (SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount, t.currency::text AS currency,
                       t.flags, t.ts, t.timeout_s, t.status::integer AS status
                  FROM transfers t WHERE t.id = ANY (p_pend) ORDER BY t.id FOR UPDATE) s;
        nq := coalesce(cardinality(q_id), 0);
        IF nq > 0 THEN
            SELECT q_status INTO q_status0;
            -- qmap: index in p_pend -> index in q_* (NULL: no such transfer).
            SELECT array_agg(g.pos ORDER BY u.ord) INTO qmap
              FROM unnest(p_pend) WITH ORDINALITY u(id, ord)
              LEFT JOIN unnest(q_id) WITH ORDINALITY g(id, pos) ON g.id = u.id;
            -- Their accounts are locked with the others (a post or void may leave them out: zero ids).
            acc := acc || q_debit || q_credit;
        END IF;
    END IF;

    -- 2. Lock and read every account the batch touches (all at once, in id order).
    IF cardinality(acc) > 0 THEN
        SELECT array_agg(s.id), array_agg(s.currency), array_agg(s.flags), array_agg(s.debits_pending),
               array_agg(s.debits_posted), array_agg(s.credits_pending), array_agg(s.credits_posted)
          INTO a_id, a_cur, a_flags, a_dp, a_dpo, a_cp, a_cpo
          FROM (SELECT a.id, a.currency::text AS currency, a.flags, a.debits_pending, a.debits_posted,
                       a.credits_pending, a.credits_posted
                  FROM accounts a WHERE a.id = ANY (acc) ORDER BY a.id FOR UPDATE) s;
        na := coalesce(cardinality(a_id), 0);
    END IF;
    IF na > 0 THEN
        SELECT array_fill(false, ARRAY[na]) INTO a_dirty;
        -- amap: index in p_acc -> index in a_* (NULL: no such account).
        SELECT array_agg(f.pos ORDER BY u.ord) INTO amap
          FROM unnest(p_acc) WITH ORDINALITY u(id, ord)
          LEFT JOIN unnest(a_id) WITH ORDINALITY f(id, pos) ON f.id = u.id;
        IF nq > 0 THEN
            SELECT array_agg(fd.pos ORDER BY u.ord), array_agg(fc.pos ORDER BY u.ord) INTO q_dix, q_cix
              FROM unnest(q_debit, q_credit) WITH ORDINALITY u(d, c, ord)
              LEFT JOIN unnest(a_id) WITH ORDINALITY fd(id, pos) ON fd.id = u.d
              LEFT JOIN unnest(a_id) WITH ORDINALITY fc(id, pos) ON fc.id = u.c;
        END IF;
    END IF;

    -- 3. Transfers that already exist with the items' ids (after the locks, so committed resolutions are seen).
    SELECT array_agg(s.id), array_agg(s.debit_account_id), array_agg(s.credit_account_id), array_agg(s.amount),
           array_agg(s.pending_id), array_agg(s.user_data), array_agg(s.timeout_s), array_agg(s.currency),
           array_agg(s.code), array_agg(s.flags), array_agg(s.ts), array_agg(s.pamount)
      INTO e_id, e_debit, e_credit, e_amount, e_pending_id, e_user_data, e_timeout, e_cur, e_code, e_flags,
           e_ts, e_pamount
      FROM (SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data, t.timeout_s,
                   t.currency::text AS currency, t.code, t.flags, t.ts,
                   (SELECT p.amount FROM transfers p WHERE p.id = t.pending_id AND t.pending_id <> nil) AS pamount
              FROM transfers t WHERE t.id = ANY (p_id)) s;
    ne := coalesce(cardinality(e_id), 0);
    IF ne > 0 THEN
        -- emap: item -> index in e_* (NULL: a new id).
        SELECT array_agg(x.pos ORDER BY u.ord) INTO emap
          FROM unnest(p_id) WITH ORDINALITY u(id, ord)
          LEFT JOIN unnest(e_id) WITH ORDINALITY x(id, pos) ON x.id = u.id;
    END IF;

    -- 4. Apply the items in memory.
    FOR i IN 1 .. n LOOP
        v_flags := p_flags[i];
        v_linked := (v_flags & 1) <> 0;
        IF v_chain = 0 AND v_linked THEN
            v_chain := i;
        END IF;
        IF v_linked AND i = n THEN
            v_code := 2;                                            -- linked_event_chain_open
        ELSIF v_broken THEN
            v_code := 1;                                            -- linked_event_failed
        ELSIF p_pre[i] <> 0 THEN
            v_code := p_pre[i];
        ELSE
            v_code := -1;
            -- 4a. The id was used before: earlier in this batch (and applied), or in the database.
            j := p_dup[i];
            WHILE j > 0 AND NOT applied[j] LOOP
                j := p_dup[j];
            END LOOP;
            IF j > 0 THEN
                v_same := v_flags = p_flags[j] AND p_pending_id[i] = p_pending_id[j]
                          AND p_user_data[i] = p_user_data[j] AND p_timeout[i] = p_timeout[j]
                          AND p_code[i] = p_code[j];
                IF v_same AND (p_flags[j] & 12) = 0 THEN
                    v_same := p_debit[i] = s_debit[j] AND p_credit[i] = s_credit[j]
                              AND p_currency[i] = s_cur[j] AND p_amount[i] = s_amount[j];
                ELSIF v_same THEN
                    v_same := (p_debit[i] = nil OR p_debit[i] = s_debit[j])
                              AND (p_credit[i] = nil OR p_credit[i] = s_credit[j])
                              AND (p_currency[i] = '' OR p_currency[i] = s_cur[j])
                              AND (CASE WHEN p_amount[i] <> 0 THEN p_amount[i] ELSE k_pamt[j] END) = s_amount[j];
                END IF;
                IF v_same THEN
                    v_code := 3;
                    r_ts[i] := r_ts[j];
                ELSE
                    v_code := 4;
                END IF;
            ELSIF ne > 0 AND emap[i] IS NOT NULL THEN
                x := emap[i];
                v_same := v_flags = e_flags[x] AND p_pending_id[i] = e_pending_id[x]
                          AND p_user_data[i] = e_user_data[x] AND p_timeout[i] = e_timeout[x]
                          AND p_code[i] = e_code[x];
                IF v_same AND (e_flags[x] & 12) = 0 THEN
                    v_same := p_debit[i] = e_debit[x] AND p_credit[i] = e_credit[x]
                              AND p_currency[i] = e_cur[x] AND p_amount[i] = e_amount[x];
                ELSIF v_same THEN
                    v_same := (p_debit[i] = nil OR p_debit[i] = e_debit[x])
                              AND (p_credit[i] = nil OR p_credit[i] = e_credit[x])
                              AND (p_currency[i] = '' OR p_currency[i] = e_cur[x])
                              AND (CASE WHEN p_amount[i] <> 0 THEN p_amount[i] ELSE e_pamount[x] END)
                                  IS NOT DISTINCT FROM e_amount[x];
                END IF;
                IF v_same THEN
                    v_code := 3;
                    r_ts[i] := e_ts[x];
                ELSE
                    v_code := 4;
                END IF;
            ELSIF (v_flags & 12) <> 0 THEN
                -- 4b. Post or void: find the pending transfer (created earlier in this batch, or stored).
                k := p_pref[i];
                WHILE k > 0 AND NOT applied[k] LOOP
                    k := p_dup[k];
                END LOOP;
                v_slot := 0;
                pv_found := false;
                IF k > 0 THEN
                    pv_found := true;
                    pv_debit := s_debit[k]; pv_credit := s_credit[k]; pv_amount := s_amount[k]; pv_cur := s_cur[k];
                    pv_flags := p_flags[k]; pv_ts := r_ts[k]; pv_timeout := p_timeout[k]; pv_status := s_status[k];
                    pv_d := k_d[k]; pv_c := k_c[k];
                ELSE
                    IF nq > 0 AND p_pix[i] > 0 THEN
                        v_slot := coalesce(qmap[p_pix[i]], 0);
                    END IF;
                    IF v_slot > 0 THEN
                        pv_found := true;
                        pv_debit := q_debit[v_slot]; pv_credit := q_credit[v_slot]; pv_amount := q_amount[v_slot];
                        pv_cur := q_cur[v_slot]; pv_flags := q_flags[v_slot]; pv_ts := q_ts[v_slot];
                        pv_timeout := q_timeout[v_slot]; pv_status := q_status[v_slot];
                        pv_d := q_dix[v_slot]; pv_c := q_cix[v_slot];
                    END IF;
                END IF;
                v_post := (v_flags & 4) <> 0;
                IF NOT pv_found THEN
                    v_code := 18;                                   -- pending_transfer_not_found
                ELSIF (pv_flags & 2) = 0 THEN
                    v_code := 19;                                   -- pending_transfer_not_pending
                ELSIF (p_debit[i] <> nil AND p_debit[i] <> pv_debit)
                      OR (p_credit[i] <> nil AND p_credit[i] <> pv_credit) THEN
                    v_code := 20;                                   -- pending_transfer_has_different_accounts
                ELSIF p_currency[i] <> '' AND p_currency[i] <> pv_cur THEN
                    v_code := 21;                                   -- pending_transfer_has_different_currency
                ELSIF pv_status = 2 THEN
                    v_code := 23;                                   -- pending_transfer_already_posted
                ELSIF pv_status = 3 THEN
                    v_code := 24;                                   -- pending_transfer_already_voided
                ELSIF pv_status = 4 THEN
                    v_code := 25;                                   -- pending_transfer_expired
                ELSIF pv_status <> 1 THEN
                    v_code := 19;
                ELSIF pv_timeout > 0 AND pv_ts + pv_timeout * 1000000000 <= base_ts + i THEN
                    v_code := 25;
                ELSIF v_post AND p_amount[i] > pv_amount THEN
                    v_code := 22;                                   -- exceeds_pending_amount
                ELSIF NOT v_post AND p_amount[i] <> 0 AND p_amount[i] <> pv_amount THEN
                    v_code := 22;
                ELSIF pv_d IS NULL OR pv_c IS NULL OR pv_d = 0 OR pv_c = 0 THEN
                    v_code := 11;                                   -- cannot happen: accounts are never removed
                ELSE
                    IF v_post AND p_amount[i] <> 0 THEN
                        amt := p_amount[i];
                    ELSE
                        amt := pv_amount;
                    END IF;
                    d := pv_d;
                    c := pv_c;
                    IF v_post AND (a_dpo[d] + amt > umax OR a_cpo[c] + amt > umax) THEN
                        v_code := 29;                               -- overflow
                    ELSE
                        a_dp[d] := a_dp[d] - pv_amount;
                        a_cp[c] := a_cp[c] - pv_amount;
                        IF v_post THEN
                            a_dpo[d] := a_dpo[d] + amt;
                            a_cpo[c] := a_cpo[c] + amt;
                        END IF;
                        a_dirty[d] := true;
                        a_dirty[c] := true;
                        IF k > 0 THEN
                            s_status[k] := CASE WHEN v_post THEN 2 ELSE 3 END;
                            k_slot[i] := -k;
                        ELSE
                            q_status[v_slot] := CASE WHEN v_post THEN 2 ELSE 3 END;
                            k_slot[i] := v_slot;
                            IF pv_timeout > 0 THEN
                                any_timeout := true;
                            END IF;
                        END IF;
                        s_debit[i] := pv_debit;
                        s_credit[i] := pv_credit;
                        s_cur[i] := pv_cur;
                        s_amount[i] := amt;
                        k_pamt[i] := pv_amount;
                        k_d[i] := d;
                        k_c[i] := c;
                        v_code := 0;
                    END IF;
                END IF;
            ELSE
                -- 4c. A plain or pending transfer.
                d := NULL;
                c := NULL;
                IF na > 0 THEN
                    d := amap[nullif(p_dix[i], 0)];
                    c := amap[nullif(p_cix[i], 0)];
                END IF;
                IF d IS NULL THEN
                    v_code := 11;                                   -- debit_account_not_found
                ELSIF c IS NULL THEN
                    v_code := 12;                                   -- credit_account_not_found
                ELSIF a_cur[d] <> p_currency[i] OR a_cur[c] <> p_currency[i] THEN
                    v_code := 14;                                   -- currency_mismatch
                ELSE
                    v_amount := p_amount[i];
                    IF (v_flags & 2) <> 0 THEN
                        nd := a_dp[d] + v_amount;
                        nc := a_cp[c] + v_amount;
                        IF nd > umax OR nc > umax OR nd + a_dpo[d] > umax OR nc + a_cpo[c] > umax THEN
                            v_code := 29;
                        ELSIF (a_flags[d] & 2) <> 0 AND nd + a_dpo[d] > a_cpo[d] THEN
                            v_code := 27;                           -- exceeds_credits
                        ELSIF (a_flags[c] & 4) <> 0 AND nc + a_cpo[c] > a_dpo[c] THEN
                            v_code := 28;                           -- exceeds_debits
                        ELSE
                            a_dp[d] := nd;
                            a_cp[c] := nc;
                            s_status[i] := 1;
                            IF p_timeout[i] > 0 THEN
                                any_timeout := true;
                            END IF;
                            v_code := 0;
                        END IF;
                    ELSE
                        nd := a_dpo[d] + v_amount;
                        nc := a_cpo[c] + v_amount;
                        IF nd > umax OR nc > umax OR nd + a_dp[d] > umax OR nc + a_cp[c] > umax THEN
                            v_code := 29;
                        ELSIF (a_flags[d] & 2) <> 0 AND nd + a_dp[d] > a_cpo[d] THEN
                            v_code := 27;
                        ELSIF (a_flags[c] & 4) <> 0 AND nc + a_cp[c] > a_dpo[c] THEN
                            v_code := 28;
                        ELSE
                            a_dpo[d] := nd;
                            a_cpo[c] := nc;
                            v_code := 0;
                        END IF;
                    END IF;
                    IF v_code = 0 THEN
                        a_dirty[d] := true;
                        a_dirty[c] := true;
                        k_d[i] := d;
                        k_c[i] := c;
                        k_pamt[i] := v_amount;
                    END IF;
                END IF;
            END IF;
            IF v_code = 0 THEN
                applied[i] := true;
                n_applied := n_applied + 1;
                r_ts[i] := base_ts + i;
            END IF;
        END IF;
        r_code[i] := v_code;

        -- 4d. Linked chains: all or nothing. Undo the chain's applied items, newest first.
        IF v_chain > 0 THEN
            IF NOT v_broken AND v_code NOT IN (0, 3) THEN
                FOR j IN REVERSE i - 1 .. v_chain LOOP
                    IF applied[j] THEN
                        d := k_d[j];
                        c := k_c[j];
                        IF (p_flags[j] & 12) <> 0 THEN
                            a_dp[d] := a_dp[d] + k_pamt[j];
                            a_cp[c] := a_cp[c] + k_pamt[j];
                            IF (p_flags[j] & 4) <> 0 THEN
                                a_dpo[d] := a_dpo[d] - s_amount[j];
                                a_cpo[c] := a_cpo[c] - s_amount[j];
                            END IF;
                            IF k_slot[j] > 0 THEN
                                q_status[k_slot[j]] := 1;
                            ELSE
                                s_status[-k_slot[j]] := 1;
                            END IF;
                        ELSIF (p_flags[j] & 2) <> 0 THEN
                            a_dp[d] := a_dp[d] - s_amount[j];
                            a_cp[c] := a_cp[c] - s_amount[j];
                            s_status[j] := 0;
                        ELSE
                            a_dpo[d] := a_dpo[d] - s_amount[j];
                            a_cpo[c] := a_cpo[c] - s_amount[j];
                        END IF;
                        applied[j] := false;
                        n_applied := n_applied - 1;
                    END IF;
                    r_code[j] := 1;
                    r_ts[j] := 0;
                END LOOP;
                v_broken := true;
            END IF;
            IF NOT v_linked THEN
                v_chain := 0;
                v_broken := false;
            END IF;
        END IF;
    END LOOP;

    -- 5. Write the outcome: the new transfers, the resolved pendings, the balances.
    IF n_applied = 0 THEN
        RETURN;
    END IF;
    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, pending_id, user_data, timeout_s, currency,
                           code, flags, ts, status)
    SELECT u.id, u.d, u.c, u.amt, u.pid, u.ud, u.tmo, u.cur, u.cd, u.fl, r_ts[u.ord], s_status[u.ord]
      FROM unnest(p_id, s_debit, s_credit, s_amount, p_pending_id, p_user_data, p_timeout, s_cur, p_code, p_flags)
           WITH ORDINALITY u(id, d, c, amt, pid, ud, tmo, cur, cd, fl, ord)
     WHERE applied[u.ord]
     ORDER BY u.id
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted <> n_applied THEN
        -- Another transaction created one of these ids after our check: the adapter retries the batch.
        RAISE EXCEPTION 'a transfer id of the batch was created concurrently' USING ERRCODE = 'serialization_failure';
    END IF;
    IF nq > 0 AND q_status IS DISTINCT FROM q_status0 THEN
        UPDATE transfers t SET status = u.st
          FROM unnest(q_id, q_status, q_status0) u(id, st, st0)
         WHERE t.id = u.id AND u.st <> u.st0;
    END IF;
    IF any_timeout THEN
        INSERT INTO pending_timeouts (id, deadline)
        SELECT u.id, r_ts[u.ord] + u.tmo * 1000000000
          FROM unnest(p_id, p_timeout) WITH ORDINALITY u(id, tmo, ord)
         WHERE applied[u.ord] AND s_status[u.ord] = 1 AND u.tmo > 0;
        IF nq > 0 THEN
            DELETE FROM pending_timeouts pt
             USING unnest(q_id, q_status, q_status0, q_timeout) u(id, st, st0, tmo)
             WHERE pt.id = u.id AND u.st <> u.st0 AND u.tmo > 0;
        END IF;
    END IF;
    UPDATE accounts a
       SET debits_pending = u.dp, debits_posted = u.dpo, credits_pending = u.cp, credits_posted = u.cpo
      FROM unnest(a_id, a_dp, a_dpo, a_cp, a_cpo, a_dirty) u(id, dp, dpo, cp, cpo, dirty)
     WHERE u.dirty AND a.id = u.id;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------------------
-- expire_pending_transfers: releases up to p_limit pending transfers whose timeout has passed (status 4 =
-- expired). pg-ledger calls it once a second. Same lock order as create_transfers: pendings, then accounts.

CREATE OR REPLACE FUNCTION expire_pending_transfers(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    now_ns bigint := (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint;
    ids    uuid[];
    v_n    integer;
BEGIN
    SELECT array_agg(id ORDER BY id) INTO ids
      FROM (SELECT id FROM pending_timeouts WHERE deadline <= now_ns ORDER BY deadline LIMIT p_limit) s;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM transfers WHERE id = ANY (ids) ORDER BY id FOR UPDATE;
    PERFORM 1 FROM accounts
     WHERE id IN (SELECT debit_account_id FROM transfers WHERE id = ANY (ids) AND status = 1
                  UNION SELECT credit_account_id FROM transfers WHERE id = ANY (ids) AND status = 1)
     ORDER BY id FOR UPDATE;
    WITH expired AS (
        UPDATE transfers SET status = 4 WHERE id = ANY (ids) AND status = 1
        RETURNING debit_account_id, credit_account_id, amount
    ), deltas AS (
        SELECT id, sum(dp) AS dp, sum(cp) AS cp
          FROM (SELECT debit_account_id AS id, amount AS dp, 0 AS cp FROM expired
                UNION ALL
                SELECT credit_account_id, 0, amount FROM expired) x
         GROUP BY id
    )
    UPDATE accounts a SET debits_pending = a.debits_pending - d.dp, credits_pending = a.credits_pending - d.cp
      FROM deltas d WHERE a.id = d.id;
    DELETE FROM pending_timeouts WHERE id = ANY (ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$fn$;
