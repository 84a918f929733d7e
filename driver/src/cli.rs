//! The CLI's side of the API socket: each command's request and how its answer is printed
//! (a table for people, `-o json` for scripts). `policy validate` runs locally.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use hyper::Method;

use crate::driver::{Deleted, Imported};
use crate::dumps::Flushed;
use crate::http_unix::{get_json, get_streaming, send_json, HttpError};
use crate::monitor::event::MonitorEvent;
use crate::monitor::filter::Filter;
use crate::policy::{parse_rules, Trace};
use crate::server::api::{
    self, DeleteRequest, PolicyRules, TraceRequest, WaitRequest, WaitResponse, POLICY, POLICY_DELETE, POLICY_TRACE,
    POLICY_WAIT,
};
use crate::table;
use crate::views::{EndpointView, IdentityView, NetworkView, StatusView};

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// A failed call, as one line for people: the daemon's own message when it gave one.
pub fn explain(e: HttpError) -> anyhow::Error {
    match e {
        HttpError::Connect { path, source } if source.kind() == std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "cannot reach the cilium-rs daemon at {}: {source} (its API socket is root's alone: run the command as root)",
            path.display()
        ),
        HttpError::Connect { path, source } => anyhow::anyhow!(
            "cannot reach the cilium-rs daemon at {}: {source} (is `cilium-rs daemon` running?)",
            path.display()
        ),
        HttpError::Status { body, status, .. } => match serde_json::from_str::<api::ApiError>(&body) {
            Ok(api::ApiError { error }) => anyhow::anyhow!("{error}"),
            Err(_) => anyhow::anyhow!("daemon answered {status}: {body}"),
        },
        other => other.into(),
    }
}

fn print<T: serde::Serialize + ?Sized>(output: Output, value: &T, render: impl Fn(&T) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", render(value)),
    }
    Ok(())
}

/// Prints every difference between the daemon's state, the kernel and Docker; returns
/// whether they agree.
pub async fn state_check(socket: &Path, docker: &Path, plugin: &str, output: Output) -> anyhow::Result<bool> {
    let networks: Vec<NetworkView> = get_json(socket, api::NETWORKS).await.map_err(explain)?;
    let endpoints: Vec<EndpointView> = get_json(socket, api::ENDPOINTS).await.map_err(explain)?;
    let kernel: Vec<crate::dumps::BpfEndpointView> = get_json(socket, api::BPF_ENDPOINTS).await.map_err(explain)?;
    let survivors = crate::recover::survivors::docker_networks(docker, plugin).await.map_err(anyhow::Error::msg)?;
    let differences = crate::recover::check::differences(&networks, &endpoints, &kernel, &survivors);
    print(output, &differences, |d| match d.is_empty() {
        true => format!(
            "the state, the kernel and Docker agree: {} networks, {} endpoints, {} kernel entries\n",
            networks.len(),
            endpoints.len(),
            kernel.len()
        ),
        false => d.iter().map(|line| format!("{line}\n")).collect(),
    })?;
    Ok(differences.is_empty())
}

/// What `state recover` did, for the operator.
pub fn print_recovered(output: Output, recovered: &crate::recover::run::Recovered) -> anyhow::Result<()> {
    print(output, recovered, |r| {
        let report = &r.report;
        let list = |names: &[String]| if names.is_empty() { "-".to_owned() } else { names.join(", ") };
        let mut text = format!("state rebuilt: {}\n", r.state_file.display());
        match &r.replaced {
            Some(path) => text += &format!("the file it replaces is kept as {}\n", path.display()),
            None => text += "there was no state file to replace\n",
        }
        match &report.backup_unreadable {
            Some(why) => text += &format!("from {}: nothing (unreadable: {why})\n", r.base.display()),
            None => {
                text += &format!(
                    "from {}: {} networks, {} endpoints, {} rules\n",
                    r.base.display(),
                    report.networks_from_backup,
                    report.endpoints_from_backup,
                    report.rules_from_backup
                )
            }
        }
        text += &format!("networks rebuilt from Docker: {}\n", list(&report.networks_rebuilt));
        text += &format!("endpoints rebuilt from Docker and the kernel: {}\n", list(&report.endpoints_rebuilt));
        if !report.endpoints_without_kernel.is_empty() {
            text += &format!(
                "endpoints the kernel no longer forwards (recorded, not joined): {}\n",
                list(&report.endpoints_without_kernel)
            );
        }
        for problem in &report.problems {
            text += &format!("not rebuilt: {problem}\n");
        }
        text += "start the daemon: it restores the datapath from this state and reconciles with Docker\n";
        text
    })
}

/// GETs `path` and prints the answer.
async fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
    socket: &Path,
    path: &str,
    output: Output,
    render: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    let value: T = get_json(socket, path).await.map_err(explain)?;
    print(output, &value, render)
}

pub async fn endpoints(socket: &Path, output: Output) -> anyhow::Result<()> {
    show(socket, api::ENDPOINTS, output, |l: &Vec<EndpointView>| table::endpoints(l)).await
}

pub async fn endpoint_get(socket: &Path, query: &str, output: Output) -> anyhow::Result<()> {
    show(socket, &api::endpoint_path(query), output, table::endpoint_detail).await
}

pub async fn networks(socket: &Path, output: Output) -> anyhow::Result<()> {
    show(socket, api::NETWORKS, output, |l: &Vec<NetworkView>| table::networks(l)).await
}

/// Prints the status; returns whether the daemon is healthy.
pub async fn status(socket: &Path, output: Output, verbose: bool) -> anyhow::Result<bool> {
    let status: StatusView = get_json(socket, api::STATUS).await.map_err(explain)?;
    print(output, &status, |s| table::status(s, verbose))?;
    Ok(status.healthy)
}

pub async fn identities(socket: &Path, output: Output) -> anyhow::Result<()> {
    show(socket, api::IDENTITIES, output, |l: &Vec<IdentityView>| table::identities(l)).await
}

/// A kernel map for `cilium-rs bpf … list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfMap {
    Endpoints,
    Ipcache,
    Policy,
    Ct,
    Nat,
}

pub async fn bpf_list(socket: &Path, map: BpfMap, output: Output) -> anyhow::Result<()> {
    match map {
        BpfMap::Endpoints => show(socket, api::BPF_ENDPOINTS, output, |l: &Vec<_>| table::bpf_endpoints(l)).await,
        BpfMap::Ipcache => show(socket, api::BPF_IPCACHE, output, |l: &Vec<_>| table::bpf_ipcache(l)).await,
        BpfMap::Policy => show(socket, api::BPF_POLICY, output, |l: &Vec<_>| table::bpf_policy(l)).await,
        BpfMap::Ct => show(socket, api::BPF_CT, output, table::bpf_ct).await,
        BpfMap::Nat => show(socket, api::BPF_NAT, output, |l: &Vec<_>| table::bpf_nat(l)).await,
    }
}

pub async fn bpf_ct_flush(socket: &Path, output: Output) -> anyhow::Result<()> {
    let flushed: Flushed = send_json(socket, Method::POST, api::BPF_CT_FLUSH, Vec::new()).await.map_err(explain)?;
    print(output, &flushed, |f| {
        format!("{} conntrack entries removed: each flow's next packet is checked by policy again\n", f.removed)
    })
}

/// A policy file's bytes; `-` reads standard input.
fn read_file(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("read the policy from standard input")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("read {}", file.display()))
}

pub async fn policy_import(socket: &Path, file: &Path, output: Output) -> anyhow::Result<()> {
    let bytes = read_file(file)?;
    let imported: Imported = send_json(socket, Method::PUT, POLICY, bytes).await.map_err(explain)?;
    print(output, &imported, |i| {
        let replaced = if i.replaced.is_empty() { String::new() } else { format!(", {} replaced", i.replaced.len()) };
        format!("revision {}: {} rules imported{replaced}, enforced\n", i.revision, i.added.len())
    })
}

pub async fn policy_get(socket: &Path, output: Output) -> anyhow::Result<()> {
    let rules: PolicyRules = get_json(socket, POLICY).await.map_err(explain)?;
    print(output, &rules, table::policy)
}

pub async fn policy_delete(socket: &Path, all: bool, labels: Vec<String>, output: Output) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&DeleteRequest { all, labels })?;
    let deleted: Deleted = send_json(socket, Method::POST, POLICY_DELETE, body).await.map_err(explain)?;
    print(output, &deleted, |d| format!("revision {}: {} rules deleted\n", d.revision, d.deleted.len()))
}

/// Checks a policy file without a daemon: what import would refuse, this refuses.
pub fn policy_validate(file: &Path) -> anyhow::Result<()> {
    let rules = parse_rules(&read_file(file)?)?;
    println!("{}: {} rules, valid", file.display(), rules.len());
    Ok(())
}

pub async fn policy_wait(socket: &Path, revision: u64, timeout_secs: u64) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&WaitRequest { revision, timeout_ms: timeout_secs.saturating_mul(1000) })?;
    let reply: WaitResponse = send_json(socket, Method::POST, POLICY_WAIT, body).await.map_err(explain)?;
    println!("revision {} enforced", reply.revision);
    Ok(())
}

pub async fn policy_trace(socket: &Path, request: TraceRequest, output: Output) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&request)?;
    let trace: Trace = send_json(socket, Method::POST, POLICY_TRACE, body).await.map_err(explain)?;
    print(output, &trace, ToString::to_string)
}

/// Prints the daemon's events as they happen (one line each, or its JSON), until the daemon
/// stops or the user interrupts.
pub async fn monitor(socket: &Path, filter: Filter, json: bool) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let uri = format!("{}?{}", crate::server::monitor::MONITOR, filter.to_query());
    let mut body = get_streaming(socket, &uri).await.map_err(explain)?;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("the daemon's event stream broke off")?.into_data() else { continue };
        pending.extend_from_slice(&data);
        // One write for all the lines of a chunk, not one per line.
        let mut out = String::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if json {
                out.push_str(text);
            } else {
                match serde_json::from_str::<MonitorEvent>(text) {
                    Ok(event) => out.push_str(&event.line()),
                    Err(_) => out.push_str(text),
                }
            }
            out.push('\n');
        }
        if !out.is_empty() {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).context("write to standard output")?;
        }
    }
    Ok(())
}

/// The recent flows, optionally those of one endpoint or with one at either end.
pub async fn flows(socket: &Path, filter: Filter, output: Output) -> anyhow::Result<()> {
    let uri = format!("{}?{}", crate::server::monitor::FLOWS, filter.to_query());
    let list: Vec<crate::monitor::flows::Flow> = get_json(socket, &uri).await.map_err(explain)?;
    print(output, list.as_slice(), table::flows)
}
