//! The outside world in the bench, cilium-rs next to Docker's bridge in the same rounds: a
//! container sending to an outside namespace (masquerading in eBPF vs iptables MASQUERADE),
//! the outside namespace connecting to a published port (eBPF vs iptables DNAT), and the host
//! connecting to `localhost:PORT` (the socket programs vs docker-proxy).

use anyhow::Result;
use integration::outside::{Outside, HOST4, OUTSIDE4};
use integration::{docker, run_container};

use super::netns::Ns;
use super::workload::{crr, iperf, Servers, CRR_PORT, CRR_SECONDS, IPERF_PORT, IPERF_SECONDS};
use super::{Rows, PLUGIN, PREFIX, ROUNDS};

/// Host ports the bench publishes: iperf3 and crr, cilium-rs and Docker's bridge.
const CRS_IPERF: u16 = 18_081;
const CRS_CRR: u16 = 18_082;
const BRIDGE_IPERF: u16 = 18_083;
const BRIDGE_CRR: u16 = 18_084;

/// Runs the outside-world workloads; the daemon's egress interface is the outside pair's.
pub fn outside(outside: &Outside) -> Result<Rows> {
    let net = format!("{PREFIX}world");
    docker(&["network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--ipv6", &net])?;
    let name = |n: &str| format!("{PREFIX}{n}");
    let publish = |iperf: u16, crr: u16| [format!("{iperf}:{IPERF_PORT}"), format!("{crr}:{CRR_PORT}")];
    let [ci, cc] = publish(CRS_IPERF, CRS_CRR);
    let [bi, bc] = publish(BRIDGE_IPERF, BRIDGE_CRR);
    run_container(&name("oc"), &["--network", &net])?;
    run_container(&name("os"), &["--network", &net, "-p", &ci, "-p", &cc])?;
    run_container(&name("obc"), &[])?;
    run_container(&name("obs"), &["-p", &bi, "-p", &bc])?;
    let (crs_client, crs_server) = (Ns::container(&name("oc"))?, Ns::container(&name("os"))?);
    let (bridge_client, bridge_server) = (Ns::container(&name("obc"))?, Ns::container(&name("obs"))?);
    let world = Ns::named(outside.ns());
    let _servers: Vec<Servers> =
        [&crs_server, &bridge_server, &world].map(Servers::start).into_iter().collect::<Result<_>>()?;
    let iperf_to = |client: &Ns, ip: &str, port: u16| iperf(client, ip, port, 1, IPERF_SECONDS);
    let crr_to = |client: &Ns, ip: &str, port: u16| crr(client, ip, port, CRR_SECONDS);

    let mut rows = Rows::new();
    for round in 0..ROUNDS {
        eprintln!("bench: outside-world round {}/{ROUNDS}", round + 1);
        let mut sample = |row: &'static str, value: Result<f64>| -> Result<()> {
            rows.entry(row).or_default().push(value?);
            Ok(())
        };
        sample("egress_tcp_bridge", iperf_to(&bridge_client, OUTSIDE4, IPERF_PORT))?;
        sample("egress_tcp_crs", iperf_to(&crs_client, OUTSIDE4, IPERF_PORT))?;
        sample("published_tcp_bridge", iperf_to(&world, HOST4, BRIDGE_IPERF))?;
        sample("published_tcp_crs", iperf_to(&world, HOST4, CRS_IPERF))?;
        sample("published_crr_bridge", crr_to(&world, HOST4, BRIDGE_CRR))?;
        sample("published_crr_crs", crr_to(&world, HOST4, CRS_CRR))?;
        sample("localhost_crr_bridge", crr_to(&Ns::host(), "127.0.0.1", BRIDGE_CRR))?;
        sample("localhost_crr_crs", crr_to(&Ns::host(), "127.0.0.1", CRS_CRR))?;
    }
    for n in ["oc", "os", "obc", "obs"] {
        let _ = docker(&["rm", "-f", &name(n)]);
    }
    docker(&["network", "rm", &net])?;
    Ok(rows)
}
