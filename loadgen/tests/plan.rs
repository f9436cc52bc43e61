//! `plan::resolve`: defaults, expansion, merging and refusals, plus the URL helpers the loopback rule relies on.

use refbench_loadgen::error::ProfileError;
use refbench_loadgen::plan::{
    self, Arrival, CalibrationPlan, DEFAULT_MAX_REQUESTS, Dispatch, Env, HttpUrl, HttpVersion,
    LoadModel, Plan, TargetKind,
};
use refbench_loadgen::profile::{Profile, SloSection};

fn two_cpus() -> Env {
    Env::cores(2)
}

/// The smallest valid profile with `head` (tables such as `[run]`) after the top-level keys and `extra` appended
/// (inside the `[[phases]]` table unless it opens a table).
fn profile(head: &str, extra: &str) -> String {
    format!(
        r#"name = "t"
{head}
[targets.floor]
builtin = "floor"
[[phases]]
name = "p"
target = "floor"
model = "open"
rate_rps = 100
duration_s = 10
{extra}"#
    )
}

fn minimal(extra: &str) -> String {
    profile("", extra)
}

fn resolve_with(text: &str, env: Env) -> Result<Plan, ProfileError> {
    let profile = Profile::parse(text, "test").expect("profile parses");
    plan::resolve(&profile, env)
}

fn resolve(text: &str) -> Plan {
    resolve_with(text, two_cpus()).unwrap_or_else(|e| panic!("refused: {e}\n{text}"))
}

/// The field a refusal names.
fn refused_field(text: &str, env: Env) -> String {
    match resolve_with(text, env) {
        Ok(_) => panic!("accepted, expected a refusal:\n{text}"),
        Err(ProfileError::Invalid { field, .. }) => field,
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

#[test]
fn defaults_are_filled_in() {
    let plan = resolve(&minimal(""));
    assert_eq!(plan.name, "t");
    assert_eq!(plan.description, "");
    assert_eq!(plan.phases.len(), 1);
    let p = &plan.phases[0];
    assert_eq!(p.connections, 8);
    assert_eq!(p.users, 8);
    assert_eq!(p.http, HttpVersion::Http1);
    assert!(!p.warmup);
    assert_eq!(
        p.load,
        LoadModel::Open {
            rate_rps: 100.0,
            end_rate_rps: 100.0,
            arrival: Arrival::Fixed,
            dispatch: Dispatch::Lane
        }
    );
    assert_eq!(p.seed, 0x5eed_0000);
    assert_eq!(p.requests.len(), 1);
    assert_eq!(
        (
            p.requests[0].method.as_str(),
            p.requests[0].path.as_str(),
            p.requests[0].weight
        ),
        ("GET", "/", 1)
    );
    assert_eq!(p.slo, SloSection::default());
    // 1000 expected requests, cap 10 % above plus 1000.
    assert_eq!(p.expected_requests(), Some(1000.0));
    assert_eq!(p.max_requests, 2100);

    assert_eq!(plan.placement.loader_cpus, vec![1]);
    assert_eq!(plan.placement.server_cpus, vec![0]);
    assert_eq!(plan.placement.loader_processes, 1);

    assert_eq!(
        plan.calibration,
        Some(CalibrationPlan {
            rate_rps: 4000.0,
            duration_s: 2.0,
            connections: 4
        })
    );
    let l = &plan.limits;
    assert_eq!(l.max_requests, DEFAULT_MAX_REQUESTS);
    assert_eq!(l.request_timeout_ms, 5000);
    assert_eq!(l.late_threshold_us, 1000);
    assert_eq!(l.max_send_lag_us_p99, 2000);
    assert_eq!(l.max_loader_cpu_ratio, 0.9);
    // Phases + calibration + 30 s + 5 s per phase.
    assert_eq!(l.max_duration_s, 10.0 + 2.0 + 30.0 + 5.0);

    assert_eq!(plan.targets.len(), 1);
    assert_eq!(
        plan.targets[0].kind,
        TargetKind::Builtin {
            system: "floor".into(),
            args: vec![],
            cdn: None,
        }
    );
}

#[test]
fn cpu_split_follows_the_core_count() {
    let one = resolve_with(&minimal(""), Env::cores(1)).expect("1 cpu");
    assert_eq!(one.placement.loader_cpus, vec![0]);
    assert_eq!(one.placement.server_cpus, vec![0]);
    assert_eq!(one.placement.loader_processes, 1);

    let four = resolve_with(&minimal(""), Env::cores(4)).expect("4 cpus");
    assert_eq!(four.placement.server_cpus, vec![0, 1]);
    assert_eq!(four.placement.loader_cpus, vec![2, 3]);
    assert_eq!(four.placement.loader_processes, 2);

    // Explicit placement wins, and loader_processes defaults to the loader core count.
    let text = profile("[run]\nloader_cpus = [0, 1]\nserver_cpus = [1]", "");
    let plan = resolve(&text);
    assert_eq!(plan.placement.loader_cpus, vec![0, 1]);
    assert_eq!(plan.placement.server_cpus, vec![1]);
    assert_eq!(plan.placement.loader_processes, 2);
}

#[test]
fn closed_and_http2_defaults() {
    let text = r#"name = "t"
[calibration]
enabled = false
[targets.floor]
builtin = "floor"
[[phases]]
name = "c"
target = "floor"
model = "closed"
duration_s = 1
connections = 2
users = 16
http = "2"
"#;
    let plan = resolve(text);
    assert_eq!(plan.calibration, None);
    let p = &plan.phases[0];
    assert_eq!(p.load, LoadModel::Closed { think_time_ms: 0.0 });
    assert_eq!(p.http, HttpVersion::Http2);
    assert_eq!((p.connections, p.users), (2, 16));
    assert_eq!(p.expected_requests(), None);
    assert_eq!(p.offered_rate_rps(), None);
    assert_eq!(p.model_name(), "closed");
    // Dispatch is an open-model setting.
    let pooled = text.replace("users = 16", "users = 16\ndispatch = \"pool\"");
    assert_eq!(refused_field(&pooled, two_cpus()), "phases[0].dispatch");
    assert_eq!(p.max_requests, DEFAULT_MAX_REQUESTS);
}

#[test]
fn steps_expand_to_one_phase_per_step() {
    let text = minimal("").replace(
        "rate_rps = 100",
        "steps_rps = [100, 250.5, 1000]\narrival = \"poisson\"\ndispatch = \"pool\"",
    );
    let plan = resolve(&text);
    let names: Vec<&str> = plan.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p@100rps", "p@250.5rps", "p@1000rps"]);
    for (p, rate) in plan.phases.iter().zip([100.0, 250.5, 1000.0]) {
        assert_eq!(
            p.load,
            LoadModel::Open {
                rate_rps: rate,
                end_rate_rps: rate,
                arrival: Arrival::Poisson,
                dispatch: Dispatch::Pool
            }
        );
        assert_eq!(p.duration_s, 10.0);
        assert_eq!(p.expected_requests(), Some(rate * 10.0));
    }
    // Each step counts towards the run's duration.
    assert_eq!(plan.limits.max_duration_s, 30.0 + 2.0 + 30.0 + 5.0 * 3.0);

    // An unknown dispatch is refused, naming the field.
    let bad = minimal("").replace("rate_rps = 100", "rate_rps = 100\ndispatch = \"any\"");
    assert_eq!(refused_field(&bad, two_cpus()), "phases[0].dispatch");

    // Steps and rate_rps, steps and a ramp, or no steps are refused.
    let both = minimal("steps_rps = [1, 2]");
    assert_eq!(refused_field(&both, two_cpus()), "phases[0].steps_rps");
    let ramp = minimal("").replace("rate_rps = 100", "steps_rps = [1, 2]\nramp_to_rps = 5");
    assert_eq!(refused_field(&ramp, two_cpus()), "phases[0].ramp_to_rps");
    let empty = minimal("").replace("rate_rps = 100", "steps_rps = []");
    assert_eq!(refused_field(&empty, two_cpus()), "phases[0].steps_rps");
    let neg = minimal("").replace("rate_rps = 100", "steps_rps = [10, -1]");
    assert_eq!(refused_field(&neg, two_cpus()), "phases[0].steps_rps[1]");
    // Two equal steps would make two phases of the same name.
    let dup = minimal("").replace("rate_rps = 100", "steps_rps = [10, 10]");
    assert_eq!(refused_field(&dup, two_cpus()), "phases[0].name");
}

#[test]
fn ramp_expects_the_mean_rate() {
    let plan = resolve(&minimal("ramp_to_rps = 300"));
    let p = &plan.phases[0];
    assert_eq!(
        p.load,
        LoadModel::Open {
            rate_rps: 100.0,
            end_rate_rps: 300.0,
            arrival: Arrival::Fixed,
            dispatch: Dispatch::Lane
        }
    );
    assert_eq!(p.expected_requests(), Some(2000.0));
    assert_eq!(p.offered_rate_rps(), Some(200.0));
    assert_eq!(p.max_requests, 2000 * 11 / 10 + 1000);
    // A ramp down is fine too; a ramp to zero is not.
    let down = resolve(&minimal("ramp_to_rps = 50"));
    assert_eq!(down.phases[0].expected_requests(), Some(750.0));
    assert_eq!(
        refused_field(&minimal("ramp_to_rps = 0"), two_cpus()),
        "phases[0].ramp_to_rps"
    );
}

#[test]
fn slo_override_wins_and_the_rest_is_inherited() {
    let text = r#"name = "t"
[targets.floor]
builtin = "floor"
[slo]
latency_us_p99 = 1000
error_ratio = 0.01
[[phases]]
name = "override"
target = "floor"
model = "open"
rate_rps = 10
duration_s = 1
[phases.slo]
latency_us_p99 = 500
latency_us_p50 = 100
[[phases]]
name = "inherit"
target = "floor"
model = "closed"
duration_s = 1
"#;
    let plan = resolve(text);
    assert_eq!(
        plan.phases[0].slo,
        SloSection {
            latency_us_p50: Some(100.0),
            latency_us_p99: Some(500.0),
            error_ratio: Some(0.01),
            ..SloSection::default()
        }
    );
    assert_eq!(
        plan.phases[1].slo,
        SloSection {
            latency_us_p99: Some(1000.0),
            error_ratio: Some(0.01),
            ..SloSection::default()
        }
    );
    // Out-of-range SLO values are refused where they are written.
    let bad = text.replace("error_ratio = 0.01", "error_ratio = 1.5");
    assert_eq!(refused_field(&bad, two_cpus()), "slo.error_ratio");
    let bad = text.replace("latency_us_p50 = 100", "latency_us_p50 = -1");
    assert_eq!(
        refused_field(&bad, two_cpus()),
        "phases[0].slo.latency_us_p50"
    );
}

#[test]
fn run_request_cap_is_enforced() {
    // 100 rps × 10 s = 1000 requests: a cap of exactly 1000 is enough, 999 is not.
    let ok = profile("[run]\nmax_requests = 1000", "");
    assert_eq!(resolve(&ok).limits.max_requests, 1000);
    let too_low = profile("[run]\nmax_requests = 999", "");
    assert_eq!(refused_field(&too_low, two_cpus()), "run.max_requests");
    let zero = profile("[run]\nmax_requests = 0", "");
    assert_eq!(refused_field(&zero, two_cpus()), "run.max_requests");
    // Warm-ups count: they send requests too.
    let warm = profile(
        "[run]\nmax_requests = 1500",
        "[[phases]]\nname = \"w\"\ntarget = \"floor\"\nwarmup = true\nmodel = \"open\"\nrate_rps = 100\nduration_s = 10\n",
    );
    assert_eq!(refused_field(&warm, two_cpus()), "run.max_requests");
}

#[test]
fn run_duration_must_cover_phases_and_calibration() {
    // 10 s of phases + 2 s of default calibration.
    let short = profile("[run]\nmax_duration_s = 11", "");
    assert_eq!(refused_field(&short, two_cpus()), "run.max_duration_s");
    let enough = profile("[run]\nmax_duration_s = 12", "");
    assert_eq!(resolve(&enough).limits.max_duration_s, 12.0);
    let no_cal = profile(
        "[run]\nmax_duration_s = 10\n[calibration]\nenabled = false",
        "",
    );
    assert_eq!(resolve(&no_cal).limits.max_duration_s, 10.0);
    let negative = profile("[run]\nmax_duration_s = -1", "");
    assert_eq!(refused_field(&negative, two_cpus()), "run.max_duration_s");
}

#[test]
fn cpu_indices_must_exist() {
    for (section, field) in [
        ("loader_cpus = [2]", "run.loader_cpus"),
        ("server_cpus = [0, 7]", "run.server_cpus"),
        ("loader_cpus = []", "run.loader_cpus"),
    ] {
        let text = profile(&format!("[run]\n{section}"), "");
        assert_eq!(refused_field(&text, two_cpus()), field, "{section}");
    }
    let text = profile("[run]\nloader_cpus = [1]", "");
    assert_eq!(refused_field(&text, Env::cores(1)), "run.loader_cpus");
    let text = profile("[run]\nloader_processes = 0", "");
    assert_eq!(refused_field(&text, two_cpus()), "run.loader_processes");
}

#[test]
fn a_profile_of_only_warmups_is_refused() {
    let text = minimal("warmup = true");
    assert_eq!(refused_field(&text, two_cpus()), "phases");
}

#[test]
fn other_refusals_name_their_field() {
    for (what, text, field) in [
        (
            "zero duration",
            minimal("").replace("duration_s = 10", "duration_s = 0"),
            "phases[0].duration_s",
        ),
        (
            "think time on open",
            minimal("think_time_ms = 5"),
            "phases[0].think_time_ms",
        ),
        (
            "rate on closed",
            minimal("").replace("model = \"open\"", "model = \"closed\""),
            "phases[0].rate_rps",
        ),
        (
            "h2 with fewer users than connections",
            minimal("http = \"2\"\nconnections = 4\nusers = 2"),
            "phases[0].users",
        ),
        (
            "bad phase name",
            minimal("").replace("name = \"p\"", "name = \"a b\""),
            "phases[0].name",
        ),
        (
            "bad request path",
            minimal("[[phases.requests]]\npath = \"nope\""),
            "phases[0].requests[0].path",
        ),
        (
            "builtin and url",
            minimal("").replace(
                "builtin = \"floor\"",
                "builtin = \"floor\"\nurl = \"http://127.0.0.1:1\"",
            ),
            "targets.floor",
        ),
        (
            "https target",
            minimal("").replace("builtin = \"floor\"", "url = \"https://127.0.0.1:1\""),
            "targets.floor.url",
        ),
        (
            "calibration values while disabled",
            profile("[calibration]\nenabled = false\nrate_rps = 10", ""),
            "calibration.rate_rps",
        ),
        (
            "loader cpu ratio",
            profile("[run]\nmax_loader_cpu_ratio = 1.5", ""),
            "run.max_loader_cpu_ratio",
        ),
    ] {
        assert_eq!(refused_field(&text, two_cpus()), field, "{what}");
    }
}

#[test]
fn unknown_keys_fail_to_parse() {
    for text in [
        format!("bogus = 1\n{}", minimal("")),
        minimal("bogus = 1"),
        profile("[run]\nbogus = 1", ""),
        format!("{}\n[slo]\nlatency_p99 = 1\n", minimal("")),
    ] {
        match Profile::parse(&text, "test") {
            Err(ProfileError::Toml { message, .. }) => {
                assert!(message.contains("unknown field"), "{message}");
            }
            other => panic!("expected a TOML error, got {other:?}"),
        }
    }
}

fn url(host: &str, port: u16, prefix: &str) -> HttpUrl {
    HttpUrl {
        host: host.into(),
        port,
        prefix: prefix.into(),
    }
}

#[test]
fn http_urls_parse() {
    assert_eq!(
        HttpUrl::parse("http://127.0.0.1:8080"),
        Ok(url("127.0.0.1", 8080, ""))
    );
    assert_eq!(
        HttpUrl::parse("http://[::1]:8080"),
        Ok(url("[::1]", 8080, ""))
    );
    assert_eq!(HttpUrl::parse("http://[::1]"), Ok(url("[::1]", 80, "")));
    assert_eq!(
        HttpUrl::parse("http://example.invalid"),
        Ok(url("example.invalid", 80, ""))
    );
    assert_eq!(
        HttpUrl::parse("http://localhost:9000/api/v1/"),
        Ok(url("localhost", 9000, "/api/v1"))
    );
    assert_eq!(
        HttpUrl::parse("http://localhost/"),
        Ok(url("localhost", 80, ""))
    );
    let https = HttpUrl::parse("https://127.0.0.1:443").unwrap_err();
    assert!(https.contains("https"), "{https}");
    for bad in [
        "127.0.0.1:80",
        "ftp://127.0.0.1",
        "http://",
        "http:///path",
        "http://user@127.0.0.1",
        "http://127.0.0.1:notaport",
        "http://127.0.0.1:65536",
        "http://[::1",
        "http://[::1]x",
    ] {
        assert!(HttpUrl::parse(bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn loopback_hosts() {
    for host in [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "[::1]",
        "localhost",
        "LOCALHOST",
    ] {
        assert!(plan::is_loopback_host(host, 80), "{host} is loopback");
    }
    for host in [
        "10.0.0.1",
        "192.168.1.1",
        "0.0.0.0",
        "::",
        "[2001:db8::1]",
        "::ffff:10.0.0.1",
    ] {
        assert!(!plan::is_loopback_host(host, 80), "{host} is not loopback");
    }
}

/// A profile with a built-in CDN topology target `cdn` (its `[targets.cdn.cdn]` lines in `topo`) and one phase on
/// it whose `[phases.cdn]` holds `cdn`.
fn cdn_profile(topo: &str, cdn: &str) -> String {
    format!(
        r#"name = "t"
[targets.cdn]
builtin = "cdn"
[targets.cdn.cdn]
{topo}
[[phases]]
name = "p"
target = "cdn"
model = "open"
rate_rps = 100
duration_s = 10
[phases.cdn]
{cdn}"#
    )
}

#[test]
fn cdn_defaults_and_workloads() {
    use refbench_loadgen::plan::{CdnTopology, CdnWorkload};
    let plan = resolve(&cdn_profile("", ""));
    assert_eq!(
        plan.targets[0].kind,
        TargetKind::Builtin {
            system: "cdn".into(),
            args: vec![],
            cdn: Some(CdnTopology {
                edges: 2,
                shields: 2,
                origin_args: vec![],
                shield_args: vec![],
                edge_args: vec![],
            }),
        }
    );
    let c = plan.phases[0].cdn.as_ref().expect("cdn phase");
    assert_eq!(
        c.workload,
        CdnWorkload::Zipf {
            keys: 10_000,
            zipf_exponent: 1.0
        }
    );
    assert_eq!(c.path_prefix, "/static/");
    assert_eq!(plan.phases[0].requests.len(), 1);
    assert_eq!(plan.phases[0].requests[0].method, "GET");

    let video = resolve(&cdn_profile(
        "edges = 1\nshields = 0",
        "workload = \"video\"\nkeys = 7",
    ));
    let c = video.phases[0].cdn.as_ref().unwrap();
    assert_eq!(
        c.workload,
        CdnWorkload::Video {
            videos: 7,
            segments: 100,
            zipf_exponent: 1.0
        }
    );
    assert_eq!(c.path_prefix, "/video/");

    let storm = resolve(&cdn_profile(
        "",
        "workload = \"storm\"\nstorm_period_ms = 50\norigin_latency_ms = 20",
    ));
    let c = storm.phases[0].cdn.as_ref().unwrap();
    assert_eq!(c.workload, CdnWorkload::Storm { period_ms: 50 });
    assert_eq!(c.origin_latency_ms, Some(20));
}

#[test]
fn cdn_refusals_name_their_field() {
    for (what, text, field) in [
        (
            "unknown workload",
            cdn_profile("", "workload = \"scan\""),
            "phases[0].cdn.workload",
        ),
        ("no keys", cdn_profile("", "keys = 0"), "phases[0].cdn.keys"),
        (
            "negative skew",
            cdn_profile("", "zipf_exponent = -1.0"),
            "phases[0].cdn.zipf_exponent",
        ),
        (
            "segments outside video",
            cdn_profile("", "segments = 10"),
            "phases[0].cdn.segments",
        ),
        (
            "keys in a storm",
            cdn_profile("", "workload = \"storm\"\nkeys = 10"),
            "phases[0].cdn.keys",
        ),
        (
            "too many storm keys",
            cdn_profile("", "workload = \"storm\"\nstorm_period_ms = 1\n")
                .replace("duration_s = 10", "duration_s = 1000"),
            "phases[0].cdn.storm_period_ms",
        ),
        (
            "relative prefix",
            cdn_profile("", "path_prefix = \"static/\""),
            "phases[0].cdn.path_prefix",
        ),
        (
            "query in prefix",
            cdn_profile("", "path_prefix = \"/a?b=\""),
            "phases[0].cdn.path_prefix",
        ),
        (
            "origin latency too long",
            cdn_profile("", "origin_latency_ms = 60001"),
            "phases[0].cdn.origin_latency_ms",
        ),
        (
            "no edges",
            cdn_profile("edges = 0", ""),
            "targets.cdn.cdn.edges",
        ),
        (
            "loadgen wires upstreams",
            cdn_profile("edge_args = [\"--upstream\", \"http://127.0.0.1:1\"]", ""),
            "targets.cdn.cdn.edge_args",
        ),
        (
            "args on a topology",
            cdn_profile("", "").replace("builtin = \"cdn\"", "builtin = \"cdn\"\nargs = [\"-x\"]"),
            "targets.cdn.args",
        ),
        (
            "http2",
            cdn_profile("", "").replace("duration_s = 10", "duration_s = 10\nhttp = \"2\""),
            "phases[0].http",
        ),
        (
            "cdn and ledger",
            format!("{}\n[phases.ledger]\naccounts = 10\n", cdn_profile("", "")),
            "phases[0].cdn",
        ),
        (
            "origin latency without an origin",
            minimal("[phases.cdn]\norigin_latency_ms = 5"),
            "phases[0].cdn.origin_latency_ms",
        ),
        (
            "topology on floor",
            minimal("").replace(
                "builtin = \"floor\"",
                "builtin = \"floor\"\n[targets.floor.cdn]\nedges = 1",
            ),
            "targets.floor.cdn",
        ),
        (
            "pids on a builtin",
            minimal("").replace("builtin = \"floor\"", "builtin = \"floor\"\npids = [1]"),
            "targets.floor.pids",
        ),
    ] {
        assert_eq!(refused_field(&text, two_cpus()), field, "{what}");
    }
}

#[test]
fn external_cdn_targets_take_an_origin_admin_and_pids() {
    let text = r#"name = "t"
[targets.nginx]
url = "http://127.0.0.1:8080"
origin_admin_url = "http://127.0.0.1:9091"
pids = [10, 11]
[[phases]]
name = "p"
target = "nginx"
model = "open"
rate_rps = 100
duration_s = 10
[phases.cdn]
workload = "storm"
origin_latency_ms = 10
"#;
    let plan = resolve(text);
    match &plan.targets[0].kind {
        TargetKind::External {
            origin_admin_url,
            pids,
            ..
        } => {
            assert_eq!(origin_admin_url.as_deref(), Some("http://127.0.0.1:9091"));
            assert_eq!(pids, &[10, 11]);
        }
        other => panic!("{other:?}"),
    }
    let bad = text.replace("http://127.0.0.1:9091", "ftp://x");
    assert_eq!(
        refused_field(&bad, two_cpus()),
        "targets.nginx.origin_admin_url"
    );
    let zero = text.replace("[10, 11]", "[0]");
    assert_eq!(refused_field(&zero, two_cpus()), "targets.nginx.pids");
}

/// The minimal profile with an OIDC phase whose `[phases.oidc]` holds `oidc`.
fn oidc_profile(oidc: &str) -> String {
    minimal(&format!("[phases.oidc]\n{oidc}"))
}

#[test]
fn oidc_defaults_and_choices() {
    let plan = resolve(&oidc_profile(""));
    let o = plan.phases[0].oidc.as_ref().expect("oidc phase");
    assert_eq!(o.flow, plan::OidcFlow::ClientCredentials);
    assert_eq!(o.auth, plan::OidcAuth::Basic);
    assert_eq!(o.client_id, plan::OIDC_BUILTIN_CLIENT_ID);
    assert_eq!(o.client_secret, plan::OIDC_BUILTIN_CLIENT_SECRET);
    assert_eq!(
        (o.verify_every, o.max_verified, o.jwks_refresh_ms),
        (20, 5000, 1000)
    );
    assert!(o.scope.is_none() && o.resource.is_none() && o.rotate_at_s.is_empty());
    assert_eq!(plan.phases[0].requests[0].method, "POST");
    let intro = resolve(&oidc_profile("flow = \"introspect\"\nrotate_at_s = [5]"));
    let o = intro.phases[0].oidc.as_ref().unwrap();
    assert_eq!((o.flow, o.verify_every), (plan::OidcFlow::Introspect, 0));
    assert_eq!(intro.phases[0].requests[0].path, plan::OIDC_INTROSPECT_PATH);

    let plan = resolve(&oidc_profile(
        "auth = \"post\"\nclient_id = \"c\"\nclient_secret = \"s3cret\"\nscope = \"read write\"\nrotate_at_s = [1, 2.5]",
    ));
    let o = plan.phases[0].oidc.as_ref().unwrap();
    assert_eq!(o.auth, plan::OidcAuth::Post);
    assert_eq!(
        (o.client_id.as_str(), o.client_secret.as_str()),
        ("c", "s3cret")
    );
    assert_eq!(o.rotate_at_s, vec![1.0, 2.5]);
    // The plan a result publishes hides the secret; the one the loaders get keeps it.
    let published = plan.redacted();
    assert_eq!(
        published.phases[0].oidc.as_ref().unwrap().client_secret,
        plan::REDACTED
    );

    // The user flows default to the built-in web client, test user and redirect URI, and ask for an ID token.
    let code = resolve(&oidc_profile("flow = \"authorization_code\""));
    let o = code.phases[0].oidc.as_ref().unwrap();
    assert_eq!(o.flow, plan::OidcFlow::AuthorizationCode);
    assert_eq!(o.client_id, plan::OIDC_BUILTIN_WEB_CLIENT_ID);
    assert_eq!(o.username.as_deref(), Some(plan::OIDC_BUILTIN_USERNAME));
    assert_eq!(
        o.redirect_uri.as_deref(),
        Some(plan::OIDC_BUILTIN_REDIRECT_URI)
    );
    assert_eq!(o.scope.as_deref(), Some("openid profile"));
    assert_eq!(o.verify_every, 20);
    let published = code.redacted();
    let p = published.phases[0].oidc.as_ref().unwrap();
    assert_eq!(p.password.as_deref(), Some(plan::REDACTED));
    let refresh = resolve(&oidc_profile(
        "flow = \"refresh_token\"\nusername = \"bob\"\npassword = \"pw\"\nscope = \"openid\"",
    ));
    let o = refresh.phases[0].oidc.as_ref().unwrap();
    assert_eq!(o.flow, plan::OidcFlow::RefreshToken);
    assert_eq!(
        (
            o.username.as_deref(),
            o.password.as_deref(),
            o.scope.as_deref()
        ),
        (Some("bob"), Some("pw"), Some("openid"))
    );
}

#[test]
fn oidc_refusals_name_their_field() {
    for (oidc, field) in [
        ("flow = \"implicit\"", "phases[0].oidc.flow"),
        ("auth = \"mtls\"", "phases[0].oidc.auth"),
        ("client_secret = \"s\"", "phases[0].oidc.client_secret"),
        ("client_id = \"c\"", "phases[0].oidc.client_secret"),
        (
            "client_id = \"\"\nclient_secret = \"s\"",
            "phases[0].oidc.client_id",
        ),
        ("scope = \"a\\nb\"", "phases[0].oidc.scope"),
        ("max_verified = 100001", "phases[0].oidc.max_verified"),
        ("jwks_refresh_ms = 10", "phases[0].oidc.jwks_refresh_ms"),
        ("rotate_at_s = [10]", "phases[0].oidc.rotate_at_s[0]"),
        ("rotate_at_s = [0]", "phases[0].oidc.rotate_at_s[0]"),
        ("rotate_at_s = [3, 2]", "phases[0].oidc.rotate_at_s[1]"),
        (
            "flow = \"introspect\"\nverify_every = 5",
            "phases[0].oidc.verify_every",
        ),
        ("username = \"alice\"", "phases[0].oidc.username"),
        (
            "flow = \"authorization_code\"\nusername = \"bob\"",
            "phases[0].oidc.password",
        ),
        (
            "flow = \"authorization_code\"\npassword = \"pw\"",
            "phases[0].oidc.password",
        ),
        (
            "flow = \"refresh_token\"\nredirect_uri = \"urn:ietf:wg:oauth:2.0:oob\"",
            "phases[0].oidc.redirect_uri",
        ),
    ] {
        assert_eq!(
            refused_field(&oidc_profile(oidc), two_cpus()),
            field,
            "{oidc}"
        );
    }
    // One scenario per phase, HTTP/1.1 only, and no request mix beside it.
    assert_eq!(
        refused_field(
            &minimal("[phases.oidc]\n[phases.cdn]\nworkload = \"zipf\""),
            two_cpus()
        ),
        "phases[0].oidc"
    );
    assert_eq!(
        refused_field(&minimal("http = \"2\"\n[phases.oidc]"), two_cpus()),
        "phases[0].http"
    );
    let unknown = Profile::parse(&oidc_profile("grant = \"x\""), "test");
    assert!(
        unknown.is_err_and(|e| e.to_string().contains("unknown field `grant`")),
        "unknown keys in [phases.oidc] are refused"
    );
}

#[test]
fn token_exchange_defaults_and_refusals() {
    let two = |extra: &str| {
        profile(
            "[targets.org-a]\nbuiltin = \"oidc\"\n",
            &format!("[phases.oidc]\nflow = \"token_exchange\"\n{extra}"),
        )
    };
    let plan = resolve(&two(
        "subject_target = \"org-a\"\nsubject_resource = \"https://org-b.test\"\naudience = \"reports\"",
    ));
    let o = plan.phases[0].oidc.as_ref().unwrap();
    assert_eq!(o.flow, plan::OidcFlow::TokenExchange);
    assert_eq!(o.subject_target.as_deref(), Some("org-a"));
    assert_eq!(
        o.subject_client,
        Some((
            plan::OIDC_BUILTIN_CLIENT_ID.to_string(),
            plan::OIDC_BUILTIN_CLIENT_SECRET.to_string()
        ))
    );
    let published = plan.redacted();
    assert_eq!(
        published.phases[0].oidc.as_ref().unwrap().subject_client,
        Some((
            plan::OIDC_BUILTIN_CLIENT_ID.to_string(),
            plan::REDACTED.to_string()
        ))
    );
    for (extra, field) in [
        ("subject_target = \"nope\"", "phases[0].oidc.subject_target"),
        (
            "subject_client_id = \"c\"",
            "phases[0].oidc.subject_client_secret",
        ),
        (
            "subject_client_secret = \"s\"",
            "phases[0].oidc.subject_client_secret",
        ),
    ] {
        assert_eq!(refused_field(&two(extra), two_cpus()), field, "{extra}");
    }
    // The exchange keys belong to the exchange flow only.
    assert_eq!(
        refused_field(&oidc_profile("audience = \"x\""), two_cpus()),
        "phases[0].oidc.audience"
    );
}

#[test]
fn targets_may_name_other_targets_urls_one_level_deep() {
    let with = |targets: &str| {
        format!(
            "name = \"t\"\n{targets}\n[[phases]]\nname = \"p\"\ntarget = \"b\"\nmodel = \"open\"\nrate_rps = 100\nduration_s = 10\n"
        )
    };
    let plan = resolve(&with(
        "[targets.a]\nbuiltin = \"oidc\"\n[targets.b]\nbuiltin = \"oidc\"\nargs = [\"--trusted-issuer\", \"org-a={url:a}\"]",
    ));
    let b = plan.targets.iter().find(|t| t.name == "b").unwrap();
    assert_eq!(b.kind.depends_on(), vec!["a".to_string()]);
    assert_eq!(
        plan::substitute_urls("org-a={url:a}/x", |n| (n == "a")
            .then(|| "http://127.0.0.1:9".into()))
        .unwrap(),
        "org-a=http://127.0.0.1:9/x"
    );
    for (targets, field) in [
        (
            "[targets.b]\nbuiltin = \"oidc\"\nargs = [\"{url:zz}\"]",
            "targets.b.args[0]",
        ),
        (
            "[targets.b]\nbuiltin = \"oidc\"\nargs = [\"x\", \"{url:b}\"]",
            "targets.b.args[1]",
        ),
        (
            "[targets.b]\nbuiltin = \"oidc\"\nargs = [\"{url:a\"]\n[targets.a]\nbuiltin = \"floor\"",
            "targets.b.args[0]",
        ),
        (
            "[targets.a]\nbuiltin = \"oidc\"\nargs = [\"{url:c}\"]\n[targets.c]\nbuiltin = \"floor\"\n[targets.b]\nbuiltin = \"oidc\"\nargs = [\"{url:a}\"]",
            "targets.b.args[0]",
        ),
    ] {
        assert_eq!(
            refused_field(&with(targets), two_cpus()),
            field,
            "{targets}"
        );
    }
}
