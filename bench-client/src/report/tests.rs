//! Tests of `report.rs`.

use super::*;
use crate::stats;

fn sample() -> StepReport {
    let mut h = stats::latency_histogram();
    for v in 1..=10_000u64 {
        stats::record(&mut h, v * 1_000);
    }
    StepReport {
        setup: Setup {
            users: 20,
            rooms: 4,
            room_size_min: 5,
            room_size_max: 5,
            size: 64,
            threads: 2,
            duration_s: 2.0,
            warmup_s: 1.0,
            path: Path::V11,
            loss: 0.0,
            seed: 1,
            nack_retry_ms: 50,
            redis: None,
        },
        rate_asked: 200.0,
        rate_achieved: 200.0,
        counters: Counters {
            sent: 600,
            sent_measured: 400,
            expected: 2000,
            received: 1998,
            window_events: 2000,
            window_datagrams: 1000,
            ..Counters::default()
        },
        latency: Percentiles::of(&h),
        send_lag: Percentiles::default(),
        recovery: Percentiles::default(),
        cpu: CpuTime {
            user_s: 0.5,
            sys_s: 0.25,
        },
        wall_s: 3.0,
        drops: None,
        kinds: None,
        shapes: Vec::new(),
    }
}

#[test]
fn derived_figures() {
    let r = sample();
    assert_eq!(r.lost(), 2);
    assert!((r.loss_pct() - 0.1).abs() < 1e-9);
    assert_eq!(r.deliveries_per_s(), 999.0);
    assert_eq!(r.datagrams_per_s(), 500.0);
    assert_eq!(r.events_per_datagram(), 2.0);
    assert_eq!(r.cpu_pct(), 25.0);
    let p = r.latency.at;
    assert!(p.windows(2).all(|w| w[0] <= w[1]) && p[4] <= r.latency.max);
    assert!((p[0] - 5_000.0).abs() / 5_000.0 < 0.002, "{p:?}");
}

#[test]
fn verdicts() {
    let mut r = sample();
    assert_eq!(r.verdict(10.0), Ok(()));
    assert!(r.verdict(5.0).unwrap_err().starts_with("p99"));
    r.counters.received = 1990;
    assert!(r.verdict(10.0).unwrap_err().starts_with("loss"));
    r.counters.received = 2000;
    r.rate_achieved = 150.0;
    assert!(r.verdict(10.0).unwrap_err().contains("bench sent only"));
    assert!(r.warnings().is_empty());
    r.send_lag.at[2] = 5_000.0;
    assert!(r.warnings()[0].contains("sent late"));
}

#[test]
fn table_and_json_carry_the_figures() {
    let r = sample();
    let t = r.table();
    assert!(
        t.contains("expected 2000, received 1998, lost 2 (0.100%)"),
        "{t}"
    );
    assert!(t.contains("99.990%"), "{t}");
    let j = r.json();
    assert!(j.starts_with("{\"users\":20,") && j.ends_with('}'), "{j}");
    assert!(j.contains("\"kernel_drops_bench\":null"), "{j}");
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["expected"], 2000);
    assert_eq!(v["lost"], 2);
}

#[test]
fn recovery_figures_in_table_and_json() {
    let mut r = sample();
    assert_eq!(r.repair_ratio(), None, "nothing dropped");
    assert!(!r.table().contains("Loss filter"));
    let mut h = stats::latency_histogram();
    for v in 1..=100u64 {
        stats::record(&mut h, v * 100_000); // 0.1 .. 10 ms
    }
    r.setup.loss = 0.05;
    r.recovery = Percentiles::of(&h);
    r.counters.lost_datagrams = 40;
    r.counters.lost_bytes = 4_000;
    r.counters.repair_datagrams = 45;
    r.counters.repair_bytes = 5_000;
    r.counters.recovered = 100;
    r.counters.gone = 2;
    r.counters.abandoned = 1;
    r.counters.nacks = 42;
    assert_eq!(r.repair_ratio(), Some(1.25));
    assert_eq!(r.unrecovered(), 3);
    assert!((r.delivered_pct() - 99.9).abs() < 1e-9);
    let t = r.table();
    for needle in [
        "Protocol      v1.1",
        "Loss filter   5.00% of received datagrams dropped (seed 1): 40 datagrams, 4000 bytes",
        "delivered 99.900% of expected; 100 events recovered by NACK",
        "3 unrecovered (2 GONE, 1 abandoned)",
        "42 NACKs sent",
        "45 repair datagrams, 5000 bytes = 1.25x the bytes lost",
        "gap seen -> event received, 100 events: p50 5.00ms",
        "p99 9.90ms",
    ] {
        assert!(t.contains(needle), "no {needle:?} in\n{t}");
    }
    assert!(
        r.warnings()[0].contains("gave up 1 events"),
        "{:?}",
        r.warnings()
    );
    let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(v["protocol"], "v1.1");
    assert_eq!(v["loss"], 0.05);
    assert_eq!(v["recovered"], 100);
    assert_eq!(v["unrecovered"], 3);
    assert_eq!(v["lost_bytes"], 4_000);
    assert_eq!(v["repair_bytes"], 5_000);
    assert_eq!(v["repair_to_lost_bytes"], 1.25);
    assert_eq!(v["recovery_samples"], 100);
    assert!(
        (v["recovery_p99_us"].as_f64().unwrap() - 9_900.0).abs() < 20.0,
        "{v}"
    );
    assert!((v["delivered_pct"].as_f64().unwrap() - 99.9).abs() < 1e-9);
    // The v1 path says so, and has no recovery lines.
    r.setup.path = Path::V1;
    let t = r.table();
    assert!(t.contains("Protocol      v1: chat datagrams"), "{t}");
    assert!(!t.contains("Recovery"), "{t}");
    let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(v["protocol"], "v1");
}

#[test]
fn json_escapes_and_nulls() {
    let mut j = Json::default();
    j.str("s", "a\"b\\c\n");
    j.num("nan", f64::NAN);
    let text = j.finish();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["s"], "a\"b\\c\n");
    assert!(v["nan"].is_null());
    assert_eq!(Json::default().finish(), "{}");
}

#[test]
fn units() {
    assert_eq!(fmt_us(85.25), "85.2us");
    assert_eq!(fmt_us(1_234.0), "1.23ms");
    assert_eq!(fmt_us(2_100_000.0), "2.10s");
}

#[test]
fn p50_bound_of_a_sweep() {
    let r = sample();
    // p50 of 1..=10 000 µs is 5 ms.
    assert_eq!(r.p50_verdict(None), Ok(()));
    assert_eq!(r.p50_verdict(Some(10.0)), Ok(()));
    let why = r.p50_verdict(Some(1.0)).unwrap_err();
    assert!(why.starts_with("p50 5.00ms > 1 ms"), "{why}");
}

#[test]
fn a_redis_run_says_so_in_the_table_and_the_json() {
    let mut r = sample();
    assert!(r.json().contains(r#""target":"ocm","protocol":"v1.1""#));
    // As bench-client sets it up: the stamps' order checks, the v1 path's, and no recovery.
    r.setup.redis = Some("127.0.0.1:6379".into());
    r.setup.path = Path::V1;
    r.counters.timed_out = 2;
    let t = r.table();
    assert!(
        t.contains("Protocol      Redis pub/sub at 127.0.0.1:6379 (RESP3)"),
        "{t}"
    );
    assert!(!t.contains("Recovery"), "{t}");
    assert!(t.contains("WARNING: Redis closed 2 connections"), "{t}");
    assert!(
        r.json()
            .contains(r#""target":"redis://127.0.0.1:6379","protocol":"redis-resp3""#)
    );
}

#[test]
fn shapes_in_table_and_json() {
    use crate::shape::{Shape, ShapeRow};
    use crate::stats::ShapeStats;
    let mut r = sample();
    assert!(!r.table().contains("By shape"), "no shapes, no block");
    assert!(!r.json().contains("\"shapes\""));
    let shapes = [Shape { size: 2, count: 5 }, Shape { size: 10, count: 1 }];
    let mut st = ShapeStats::new(2);
    for _ in 0..100 {
        st.sent(0, 2);
    }
    for k in 0..199 {
        st.received(0, 1_000 + k);
    }
    st.sent(1, 10);
    for _ in 0..10 {
        st.received(1, 2_000_000);
    }
    r.shapes = ShapeRow::rows(&shapes, &st, 2.0);
    assert_eq!(r.shapes[0].lost(), 1);
    assert!((r.shapes[0].loss_pct() - 0.5).abs() < 1e-9);
    assert_eq!(r.shapes[1].deliveries_per_s(), 5.0);
    let t = r.table();
    assert!(t.contains("By shape"), "{t}");
    let row = t
        .lines()
        .find(|l| l.contains("5 of 2"))
        .expect("a row for 5 rooms of 2");
    assert!(row.contains("0.500") && row.contains(" 50 "), "{row}");
    let all = t
        .lines()
        .find(|l| l.trim_start().starts_with("all"))
        .expect("a total row");
    assert!(all.contains(" 20 ") && all.contains("0.476"), "{all}");
    let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    let s = &v["shapes"];
    assert_eq!(s.as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(s[0]["room_size"], 2);
    assert_eq!(s[0]["rooms"], 5);
    assert_eq!(s[0]["expected"], 200);
    assert_eq!(s[0]["received"], 199);
    assert_eq!(s[1]["users"], 10);
    assert!(
        (s[1]["latency_p99_us"].as_f64().unwrap() - 2_000.0).abs() < 2.0,
        "{v}"
    );
}
