//! End to end: a cascade. The trading PC (A) pushes once to cloud B; B serves what it
//! receives and re-publishes its folder (`push --watch` of its own root) to C and D. So the
//! home uplink carries each byte once however many backups there are. Measured against A
//! pushing to B, C and D directly.

mod common;

use common::{Sandbox, wait_identical, write_random};
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn a_cascade_sends_each_byte_once_from_the_source() {
    let sandbox = Sandbox::new();
    let a = sandbox.dir("a");
    write_random(&a.join("db/tick/ES.ncd"), 1, 6 * MIB);
    write_random(&a.join("db/tick/NQ.ncd"), 2, 2 * MIB);
    std::fs::create_dir_all(a.join("workspaces")).unwrap();
    for i in 0..50 {
        std::fs::write(
            a.join(format!("workspaces/w{i}.xml")),
            format!("<w n='{i}'/>"),
        )
        .unwrap();
    }
    let data: u64 = 8 * MIB as u64 + 50 * 12;

    // Cascade: A -> B, and B -> C, D.
    let (b, c, d) = (sandbox.dir("b"), sandbox.dir("c"), sandbox.dir("d"));
    let (agent_b, agent_c, agent_d) = (sandbox.serve(&b), sandbox.serve(&c), sandbox.serve(&d));
    let relay = sandbox
        .push(&b)
        .target(&agent_c)
        .target(&agent_d)
        .state_dir(&sandbox.path("state-b"))
        .arg("--watch")
        .spawn_continuous();
    let first = sandbox.push(&a).target(&agent_b).run();
    first.assert_ok();
    let from_a = first.target_u64(&agent_b.url, "wire_bytes");
    for (name, dir) in [("C", &c), ("D", &d)] {
        let took = wait_identical(&a, dir, Duration::from_secs(30), &|| relay.log());
        println!(
            "cascade: {name} identical to A {:.2} s after A's push ended",
            took.as_secs_f64()
        );
    }
    drop(relay);

    // Direct: A -> E, F, G.
    let (e, f, g) = (sandbox.dir("e"), sandbox.dir("f"), sandbox.dir("g"));
    let (agent_e, agent_f, agent_g) = (sandbox.serve(&e), sandbox.serve(&f), sandbox.serve(&g));
    let direct = sandbox
        .push(&a)
        .target(&agent_e)
        .target(&agent_f)
        .target(&agent_g)
        .state_dir(&sandbox.path("state-direct"))
        .run();
    direct.assert_ok();
    let from_a_direct: u64 = [&agent_e.url, &agent_f.url, &agent_g.url]
        .iter()
        .map(|url| direct.target_u64(url, "wire_bytes"))
        .sum();
    println!(
        "fan-out to three backups, bytes the source sent ({data} bytes of data): cascade {from_a} ({:.3}x the data), direct {from_a_direct} ({:.3}x)",
        from_a as f64 / data as f64,
        from_a_direct as f64 / data as f64
    );
    assert!(
        (from_a as f64) < 1.05 * data as f64,
        "in a cascade the source sends each byte once: {from_a} bytes for {data}"
    );
    assert!(
        (from_a_direct as f64) > 2.9 * data as f64,
        "directly, the source sends it to each of three targets: {from_a_direct}"
    );
}
