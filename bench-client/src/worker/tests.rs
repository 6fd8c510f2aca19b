//! Tests of `worker.rs`.

use super::*;
use std::time::Duration;

use std::net::UdpSocket as StdUdp;

/// Intended send times of the step below: measured from 1 s to 2 s.
const PLAN: StepPlan = StepPlan {
    rate: 100.0,
    start_ns: 0,
    measure_from_ns: 1_000_000_000,
    end_ns: 2_000_000_000,
    grace_ns: 0,
    give_up_ns: 0,
    size: 64,
};

/// User 0 of a two-user room, its socket connected to a fake server on loopback.
fn user_and_server() -> (User, StdUdp) {
    let server = StdUdp::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let m = Membership {
        room: "r".into(),
        user: "u0".into(),
        token: vec![7; 32],
        udp_addr: addr,
        idle_timeout: Duration::from_secs(30),
        host: false,
        server: addr,
        password: Vec::new(),
        resume_key: Vec::new(),
    };
    let mut u = User::new(0, 0, m, 0, crate::gaps::NACK_RETRY_NS).unwrap();
    u.trackers = vec![OrderTracker::default(); 2];
    (u, server)
}

/// A datagram of MESSAGE events from user 1, one per Seq; user 1's own numbering is
/// the Seq minus one.
fn messages(seqs: &[u32]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut n = 0;
    for &seq in seqs {
        let mut body = [0u8; 64];
        let stamp = Stamp {
            sender: 1,
            seq: seq - 1,
            intended_ns: 1_500_000_000,
        };
        let body = stamp.encode(&mut body).unwrap();
        let ev = RawEvent {
            kind: EventKind::Message as u8,
            seq,
            user: "u1",
            body: body.as_bytes(),
        };
        n += ev.encode(&mut out[n..]).unwrap();
    }
    out.truncate(n);
    out
}

fn notice(ev: RawEvent<'_>) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    let n = ev.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// The next datagram the fake server got, as a control body.
fn next_nack(server: &StdUdp) -> (u32, u16) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = server.recv(&mut buf).unwrap();
    let d = ControlDatagram::parse(&buf[..n]).unwrap();
    assert_eq!((d.room, d.token), (&b"r"[..], &[7u8; 32][..]));
    match d.body {
        ControlBody::Nack { from_seq, count } => (from_seq, count),
        other => panic!("not a NACK: {other:?}"),
    }
}

#[test]
fn gaps_are_nacked_and_repairs_counted() {
    let topo = Topology::new(2, 1);
    let (mut user, server) = user_and_server();
    let mut sink = LoadSink::new(&topo, &PLAN, Path::V11);
    let t = 1_000_000_000u64;
    // 10 anchors; 11; then 12 is lost (the filter counts it), 13, 14, 15 arrive: the
    // third event past the gap NACKs it at once.
    sink.datagram(&mut user, &messages(&[10]), false, t);
    sink.datagram(&mut user, &messages(&[11]), false, t + 1);
    sink.lost(93);
    sink.datagram(&mut user, &messages(&[13]), false, t + 2);
    sink.datagram(&mut user, &messages(&[14]), false, t + 3);
    assert_eq!(sink.c.nacks, 0, "two later events are not enough");
    sink.datagram(&mut user, &messages(&[15]), false, t + 4);
    assert_eq!(sink.c.nacks, 1);
    assert_eq!(next_nack(&server), (12, 1));
    assert_eq!(sink.c.repair_datagrams, 0, "live datagrams are not repairs");
    // The repair: behind the highest Seq, so it answers the NACK.
    let repair = messages(&[12]);
    sink.datagram(&mut user, &repair, false, t + 1_000_000);
    let c = sink.c;
    assert_eq!((c.recovered, c.reordered, c.received), (1, 0, 6));
    assert_eq!(c.repair_datagrams, 1);
    assert_eq!(c.repair_bytes, repair.len() as u64);
    assert_eq!((c.lost_datagrams, c.lost_bytes), (1, 93));
    assert_eq!(sink.recovery.len(), 1);
    // Detected at t+2 (when 13 showed the gap), filled at t+1ms.
    assert!(sink.recovery.equivalent(sink.recovery.max(), 1_000_000 - 2));
    // A second copy: a duplicate, dropped, and still a repair datagram.
    sink.datagram(&mut user, &repair, false, t + 2_000_000);
    assert_eq!((sink.c.duplicates, sink.c.room_duplicates), (1, 1));
    assert_eq!(sink.c.received, 6);
    assert_eq!(sink.c.repair_datagrams, 2);

    // A tail notice says the room is at 18: 16-18 are missing, NACKed after the wait.
    let mut body = [0u8; SyncInfo::BODY_LEN];
    let tail = SyncInfo {
        last_seq: 18,
        last_client_seq: 0,
    };
    sink.datagram(
        &mut user,
        &notice(tail.event("", &mut body)),
        false,
        t + 3_000_000,
    );
    assert_eq!(sink.c.sync_events, 1);
    assert_eq!(user.gaps.missing(), 3);
    let due = t + 3_000_000 + crate::gaps::REORDER_WAIT_NS;
    assert_eq!(user.gaps.next_due(), Some(due));
    assert!(sink.next_nack_ns <= due, "the worker looks by then");
    sink.c.nacks += user.send_nacks(&mut sink.nack_buf, due);
    assert_eq!(next_nack(&server), (16, 3));
    // GONE for 16-17; 18 comes back packed with nothing else.
    let mut body = [0u8; Gone::BODY_LEN];
    let gone = Gone {
        from_seq: 16,
        count: 2,
    };
    let g = notice(gone.event(&mut body));
    sink.datagram(&mut user, &g, false, t + 20_000_000);
    sink.datagram(&mut user, &messages(&[18]), false, t + 21_000_000);
    let c = sink.c;
    assert_eq!((c.gone_events, sink.counts.gone, c.recovered), (1, 2, 2));
    assert_eq!(c.repair_datagrams, 4, "the GONE and the repair of 18");
    assert_eq!(user.gaps.missing(), 0);
    assert_eq!(c.malformed + c.foreign, 0);
}

#[test]
fn the_v1_path_tracks_no_gaps() {
    let topo = Topology::new(2, 1);
    let (mut user, server) = user_and_server();
    let mut sink = LoadSink::new(&topo, &PLAN, Path::V1);
    for (i, seq) in [1u32, 2, 5, 6, 7, 8].into_iter().enumerate() {
        sink.datagram(
            &mut user,
            &messages(&[seq]),
            false,
            1_000_000_000 + i as u64,
        );
    }
    assert_eq!(sink.c.nacks, 0);
    assert_eq!(user.gaps.open_gaps(), 0);
    assert_eq!(sink.c.received, 6);
    assert_eq!(sink.missing, 2, "seen as per-sender gaps, as before");
    server.set_nonblocking(true).unwrap();
    assert!(server.recv(&mut [0u8; 64]).is_err(), "nothing sent");
}
