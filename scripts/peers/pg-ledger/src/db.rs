//! The PostgreSQL side: a bounded pool, the schema, and one statement (one round trip, one transaction) per batch.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls};
use uuid::Uuid;

use crate::wire::{self, Account, Num, Transfer, transfer_flags};

pub const SCHEMA: &str = include_str!("../schema.sql");

const CREATE_ACCOUNTS: &str = "SELECT r_code, r_ts FROM create_accounts($1::uuid[], $2::uuid[], $3::text[], \
    $4::int4[], $5::int4[], $6::int4[], $7::int4[])";
const CREATE_TRANSFERS: &str = "SELECT r_code, r_ts FROM create_transfers($1::uuid[], $2::uuid[], $3::uuid[], \
    $4::numeric[], $5::uuid[], $6::uuid[], $7::int8[], $8::text[], $9::int4[], $10::int4[], $11::int4[], \
    $12::int4[], $13::int4[], $14::uuid[], $15::int4[], $16::int4[], $17::uuid[], $18::int4[])";
const LOOKUP_ACCOUNTS: &str = "SELECT a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, \
    a.user_data, a.currency::text, a.code, a.flags, a.ts \
    FROM unnest($1::uuid[]) WITH ORDINALITY u(id, ord) JOIN accounts a ON a.id = u.id ORDER BY u.ord";
const LOOKUP_TRANSFERS: &str = "SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, \
    t.user_data, t.timeout_s, t.currency::text, t.code, t.flags, t.ts \
    FROM unnest($1::uuid[]) WITH ORDINALITY u(id, ord) JOIN transfers t ON t.id = u.id ORDER BY u.ord";
const EXPIRE: &str = "SELECT expire_pending_transfers(8190)";

/// Statements every pooled connection prepares once (then each batch is Bind + Execute + Sync: one round trip).
const PREPARED: [&str; 4] = [
    CREATE_ACCOUNTS,
    CREATE_TRANSFERS,
    LOOKUP_ACCOUNTS,
    LOOKUP_TRANSFERS,
];

/// Attempts of one batch when PostgreSQL reports a serialization failure or a deadlock (the transaction was rolled
/// back, nothing applied).
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug)]
pub enum DbError {
    /// PostgreSQL refused or rolled back the statement: nothing was applied.
    RolledBack(String),
    /// No connection within the wait timeout: nothing was applied.
    Busy(String),
    /// The connection failed mid-statement: the outcome is unknown.
    InDoubt(String),
}

impl DbError {
    fn from_pg(e: tokio_postgres::Error) -> DbError {
        if e.as_db_error().is_some() {
            DbError::RolledBack(format!("{e}"))
        } else {
            DbError::InDoubt(format!("{e}"))
        }
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

pub struct Db {
    pool: Pool,
}

pub fn pool(conninfo: &str, size: usize, wait: Duration) -> Result<Db, String> {
    let mut cfg: Config = conninfo.parse().map_err(|e| format!("--pg: {e}"))?;
    // Bounded statements; synchronous_commit is left at the server's setting (the script sets it to `on` and
    // checks it): a batch's response is sent only after its COMMIT is durable.
    cfg.options("-c statement_timeout=30000 -c lock_timeout=20000");
    cfg.application_name("pg-ledger");
    cfg.connect_timeout(Duration::from_secs(10));
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| format!("pool: {e}"))?;
    Ok(Db { pool })
}

/// Per-item results of a batch.
pub struct BatchResult {
    pub codes: Vec<i32>,
    pub timestamps: Vec<i64>,
}

impl Db {
    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(_) => {
                DbError::Busy("no database connection free in time".into())
            }
            deadpool_postgres::PoolError::Backend(e) => {
                DbError::RolledBack(format!("connect: {e}"))
            }
            e => DbError::Busy(format!("pool: {e}")),
        })
    }

    /// Applies the schema (idempotent) and opens and prepares every pooled connection.
    pub async fn init(&self, apply_schema: bool) -> Result<String, String> {
        let c = self.client().await.map_err(|e| format!("{e:?}"))?;
        if apply_schema {
            // One schema change at a time, even with several adapters starting together.
            c.batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7177); {SCHEMA}; COMMIT;"
            ))
            .await
            .map_err(|e| format!("applying schema.sql: {e}"))?;
        }
        let row = c
            .query_one("SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')", &[])
            .await
            .map_err(|e| format!("{e}"))?;
        let (version, sync, fsync): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        drop(c);
        let size = self.pool.status().max_size;
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            let c = self.client().await.map_err(|e| format!("{e:?}"))?;
            for sql in PREPARED {
                c.prepare_cached(sql)
                    .await
                    .map_err(|e| format!("prepare: {e}"))?;
            }
            held.push(c);
        }
        Ok(format!(
            "PostgreSQL {version}, synchronous_commit={sync}, fsync={fsync}"
        ))
    }

    async fn call(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<BatchResult, DbError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let c = self.client().await?;
            let stmt = c.prepare_cached(sql).await.map_err(DbError::from_pg)?;
            match c.query_one(&stmt, params).await {
                Ok(row) => {
                    return Ok(BatchResult {
                        codes: row.get(0),
                        timestamps: row.get(1),
                    });
                }
                Err(e) if retryable(&e) && attempt < MAX_ATTEMPTS => {
                    crate::METRICS
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(c);
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
                }
                Err(e) => return Err(DbError::from_pg(e)),
            }
        }
    }

    pub async fn create_accounts(
        &self,
        items: &[Account],
        pre: &[i32],
    ) -> Result<BatchResult, DbError> {
        let n = items.len();
        let mut id = Vec::with_capacity(n);
        let mut user_data = Vec::with_capacity(n);
        let mut currency = Vec::with_capacity(n);
        let mut code = Vec::with_capacity(n);
        let mut flags = Vec::with_capacity(n);
        for (a, &p) in items.iter().zip(pre) {
            id.push(wire::id_uuid(a.id));
            user_data.push(wire::id_uuid(a.user_data));
            currency.push(if p == 0 {
                wire::currency_str(a.currency).unwrap_or_default()
            } else {
                String::new()
            });
            code.push(i32::from(a.code));
            flags.push(i32::from(a.flags));
        }
        let dup = dup_of(items.iter().map(|a| a.id));
        self.call(
            CREATE_ACCOUNTS,
            &[&id, &user_data, &currency, &code, &flags, &pre, &dup],
        )
        .await
    }

    pub async fn create_transfers(
        &self,
        items: &[Transfer],
        pre: &[i32],
    ) -> Result<BatchResult, DbError> {
        let n = items.len();
        let mut id = Vec::with_capacity(n);
        let mut debit = Vec::with_capacity(n);
        let mut credit = Vec::with_capacity(n);
        let mut amount = Vec::with_capacity(n);
        let mut pending_id = Vec::with_capacity(n);
        let mut user_data = Vec::with_capacity(n);
        let mut timeout = Vec::with_capacity(n);
        let mut currency = Vec::with_capacity(n);
        let mut code = Vec::with_capacity(n);
        let mut flags = Vec::with_capacity(n);
        // Dense indexes the function uses instead of searching: accounts and pendings by id.
        let mut acc_ix: HashMap<u128, i32> = HashMap::with_capacity(2 * n);
        let mut acc: Vec<u128> = Vec::with_capacity(2 * n);
        let mut pend_ix: HashMap<u128, i32> = HashMap::new();
        let mut pend: Vec<u128> = Vec::new();
        let mut dix = Vec::with_capacity(n);
        let mut cix = Vec::with_capacity(n);
        let mut pix = Vec::with_capacity(n);
        let index_of = |v: u128, ix: &mut HashMap<u128, i32>, list: &mut Vec<u128>| -> i32 {
            if v == 0 {
                return 0;
            }
            *ix.entry(v).or_insert_with(|| {
                list.push(v);
                list.len() as i32
            })
        };
        for (t, &p) in items.iter().zip(pre) {
            id.push(wire::id_uuid(t.id));
            debit.push(wire::id_uuid(t.debit_account_id));
            credit.push(wire::id_uuid(t.credit_account_id));
            amount.push(Num(t.amount));
            pending_id.push(wire::id_uuid(t.pending_id));
            user_data.push(wire::id_uuid(t.user_data));
            timeout.push(i64::from(t.timeout_s));
            currency.push(if p == 0 {
                wire::currency_str(t.currency).unwrap_or_default()
            } else {
                String::new()
            });
            code.push(i32::from(t.code));
            flags.push(i32::from(t.flags));
            if p == 0 {
                dix.push(index_of(t.debit_account_id, &mut acc_ix, &mut acc));
                cix.push(index_of(t.credit_account_id, &mut acc_ix, &mut acc));
                pix.push(if t.is_post_or_void() {
                    index_of(t.pending_id, &mut pend_ix, &mut pend)
                } else {
                    0
                });
            } else {
                dix.push(0);
                cix.push(0);
                pix.push(0);
            }
        }
        let dup = dup_of(items.iter().map(|t| t.id));
        // Post/void: the latest earlier item whose id is its pending_id (a pending created in the same batch).
        let mut last: HashMap<u128, i32> = HashMap::with_capacity(n);
        let mut pref = Vec::with_capacity(n);
        for (i, t) in items.iter().enumerate() {
            let r = if t.flags & (transfer_flags::POST | transfer_flags::VOID) != 0 {
                last.get(&t.pending_id).copied().unwrap_or(0)
            } else {
                0
            };
            pref.push(r);
            last.insert(t.id, i as i32 + 1);
        }
        let acc: Vec<Uuid> = acc.into_iter().map(wire::id_uuid).collect();
        let pend: Vec<Uuid> = pend.into_iter().map(wire::id_uuid).collect();
        self.call(
            CREATE_TRANSFERS,
            &[
                &id,
                &debit,
                &credit,
                &amount,
                &pending_id,
                &user_data,
                &timeout,
                &currency,
                &code,
                &flags,
                &pre,
                &dup,
                &pref,
                &acc,
                &dix,
                &cix,
                &pend,
                &pix,
            ],
        )
        .await
    }

    pub async fn lookup_accounts(&self, ids: &[Uuid], out: &mut Vec<u8>) -> Result<usize, DbError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(LOOKUP_ACCOUNTS)
            .await
            .map_err(DbError::from_pg)?;
        let rows = c.query(&stmt, &[&ids]).await.map_err(DbError::from_pg)?;
        for r in &rows {
            let currency: String = r.get(6);
            Account {
                id: r.get::<_, Uuid>(0).as_u128(),
                debits_pending: r.get::<_, Num>(1).0,
                debits_posted: r.get::<_, Num>(2).0,
                credits_pending: r.get::<_, Num>(3).0,
                credits_posted: r.get::<_, Num>(4).0,
                user_data: r.get::<_, Uuid>(5).as_u128(),
                currency: wire::currency_code(&currency).unwrap_or(0),
                code: r.get::<_, i32>(7) as u16,
                flags: r.get::<_, i32>(8) as u16,
                timestamp: r.get::<_, i64>(9) as u64,
                reserved_zero: true,
            }
            .encode(out);
        }
        Ok(rows.len())
    }

    pub async fn lookup_transfers(
        &self,
        ids: &[Uuid],
        out: &mut Vec<u8>,
    ) -> Result<usize, DbError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(LOOKUP_TRANSFERS)
            .await
            .map_err(DbError::from_pg)?;
        let rows = c.query(&stmt, &[&ids]).await.map_err(DbError::from_pg)?;
        for r in &rows {
            let currency: String = r.get(7);
            Transfer {
                id: r.get::<_, Uuid>(0).as_u128(),
                debit_account_id: r.get::<_, Uuid>(1).as_u128(),
                credit_account_id: r.get::<_, Uuid>(2).as_u128(),
                amount: r.get::<_, Num>(3).0,
                pending_id: r.get::<_, Uuid>(4).as_u128(),
                user_data: r.get::<_, Uuid>(5).as_u128(),
                timeout_s: r.get::<_, i64>(6) as u32,
                currency: wire::currency_code(&currency).unwrap_or(0),
                code: r.get::<_, i32>(8) as u16,
                flags: r.get::<_, i32>(9) as u16,
                timestamp: r.get::<_, i64>(10) as u64,
                reserved_zero: true,
            }
            .encode(out);
        }
        Ok(rows.len())
    }

    /// `GET /verify`: per currency, the balance sums, and the same sums recomputed from the transfers.
    pub async fn verify(&self) -> Result<serde_json::Value, DbError> {
        let c = self.client().await?;
        // One snapshot for both scans.
        let q = "WITH a AS (SELECT currency::text AS currency, count(*) AS n, sum(debits_posted) AS dpo, \
                        sum(credits_posted) AS cpo, sum(debits_pending) AS dp, sum(credits_pending) AS cp, \
                        count(*) FILTER (WHERE (flags & 2) <> 0 AND debits_pending + debits_posted > credits_posted) AS dlim, \
                        count(*) FILTER (WHERE (flags & 4) <> 0 AND credits_pending + credits_posted > debits_posted) AS clim \
                   FROM accounts GROUP BY currency), \
                 t AS (SELECT currency::text AS currency, count(*) AS n, \
                        coalesce(sum(amount) FILTER (WHERE (flags & 10) = 0), 0) AS posted, \
                        coalesce(sum(amount) FILTER (WHERE status = 1), 0) AS pending \
                   FROM transfers GROUP BY currency) \
                 SELECT coalesce(a.currency, t.currency), coalesce(a.n, 0), coalesce(t.n, 0), \
                        coalesce(a.dpo, 0)::text, coalesce(a.cpo, 0)::text, coalesce(a.dp, 0)::text, coalesce(a.cp, 0)::text, \
                        coalesce(t.posted, 0)::text, coalesce(t.pending, 0)::text, \
                        coalesce(a.dpo = a.cpo AND a.dp = a.cp, t.n IS NULL), \
                        coalesce(a.dpo = t.posted AND a.dp = t.pending, t.n IS NULL), \
                        coalesce(a.dlim + a.clim, 0) \
                   FROM a FULL JOIN t ON a.currency = t.currency ORDER BY 1";
        let rows = c.query(q, &[]).await.map_err(DbError::from_pg)?;
        let mut currencies = serde_json::Map::new();
        let mut errors = Vec::new();
        let (mut accounts, mut transfers) = (0i64, 0i64);
        let mut ok = true;
        for r in &rows {
            let name: String = r.get(0);
            let na: i64 = r.get(1);
            let nt: i64 = r.get(2);
            let balanced: bool = r.get(9);
            let matches: bool = r.get(10);
            let limits_broken: i64 = r.get(11);
            accounts += na;
            transfers += nt;
            if !balanced {
                errors.push(
                    serde_json::json!({"what": format!("{name}: debits and credits differ")}),
                );
            }
            if !matches {
                errors.push(serde_json::json!({"what": format!("{name}: balances differ from the sums of the transfers")}));
            }
            if limits_broken != 0 {
                errors.push(serde_json::json!({"what": format!("{name}: {limits_broken} accounts break their balance limit")}));
            }
            ok &= balanced && matches && limits_broken == 0;
            currencies.insert(
                name,
                serde_json::json!({
                    "debits_posted": r.get::<_, String>(3),
                    "credits_posted": r.get::<_, String>(4),
                    "debits_pending": r.get::<_, String>(5),
                    "credits_pending": r.get::<_, String>(6),
                    "transfers_posted": r.get::<_, String>(7),
                    "transfers_pending": r.get::<_, String>(8),
                    "balanced": balanced,
                    "matches_transfers": matches,
                }),
            );
        }
        Ok(serde_json::json!({
            "ok": ok,
            "records": accounts + transfers,
            "head_hash": "",
            "accounts": accounts,
            "transfers": transfers,
            "currencies": currencies,
            "errors": errors,
        }))
    }

    pub async fn status(&self) -> Result<serde_json::Value, DbError> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM transfers), \
                        (SELECT count(*) FROM transfers WHERE status = 1), \
                        (SELECT coalesce(max(ts), 0) FROM transfers), current_setting('server_version'), \
                        current_setting('synchronous_commit')",
                &[],
            )
            .await
            .map_err(DbError::from_pg)?;
        let st = self.pool.status();
        Ok(serde_json::json!({
            "system": "pg-ledger",
            "accounts": r.get::<_, i64>(0),
            "transfers": r.get::<_, i64>(1),
            "pending": r.get::<_, i64>(2),
            "last_timestamp": r.get::<_, i64>(3).to_string(),
            "postgres_version": r.get::<_, String>(4),
            "synchronous_commit": r.get::<_, String>(5),
            "pool": {"max_size": st.max_size, "size": st.size, "available": st.available},
        }))
    }

    /// Releases expired reservations; returns how many.
    pub async fn expire(&self) -> Result<i32, DbError> {
        let c = self.client().await?;
        let r = c.query_one(EXPIRE, &[]).await.map_err(DbError::from_pg)?;
        Ok(r.get(0))
    }
}

/// Per item, the 1-based index of the previous item with the same id (0 = none).
fn dup_of(ids: impl Iterator<Item = u128>) -> Vec<i32> {
    let mut last: HashMap<u128, i32> = HashMap::new();
    ids.enumerate()
        .map(|(i, id)| last.insert(id, i as i32 + 1).unwrap_or(0))
        .collect()
}
