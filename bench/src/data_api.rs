//! The `data-api` scenario: a `findOne` through the HTTP Data API next to the same `find` by
//! `_id` through the wire protocol, straight to FerretDB and through the gateway, in one run.
//!
//! The three targets take turns in short rounds, the order rotating and reversing, as in
//! [`crate::latency`], so drift on a shared machine hits all alike. The wire targets use the
//! bench's raw client ([`crate::load`]); the HTTP target uses hyper's client, one keep-alive
//! connection per worker, with an API key (`mongomux api-key add`) of a gateway user that has
//! the bench's credentials, so both gateway paths run as the same user with authorization on.
//! What the table shows: requests per second and the time the Data API adds over the driver's
//! path through the same gateway, and over the database itself.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::latency::seed;
use crate::load::{doc_id, Endpoint, Op, Round, Tally, Target, DB, FIND_COLL, OP_DEADLINE};
use crate::procs::{wait_listening_line, TempDir, UpstreamProc, UPSTREAM_PASSWORD, UPSTREAM_USER};
use crate::report::{new_histogram, signed, us, Csv, Summary, Table};
use crate::Common;

#[derive(Args, Debug)]
pub struct DataApiArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrency levels (comma-separated) [default: 1,16; 1,4 with --smoke].
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<u32>>,
    /// Measured operations per level and target [default: 5000; 200 with --smoke].
    #[arg(long)]
    ops: Option<u64>,
    /// Operations per round [default: 500; 50 with --smoke].
    #[arg(long)]
    round_ops: Option<u64>,
}

/// The gateway with users, an API key and the Data API on.
struct ApiGateway {
    child: Child,
    wire: SocketAddr,
    http: SocketAddr,
    key: String,
    _dir: TempDir,
}

impl Drop for ApiGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "mongomux {args:?} failed");
    Ok(String::from_utf8(out.stdout)?)
}

impl ApiGateway {
    fn start(
        bin: &Path,
        upstream: SocketAddr,
        pool_size: u32,
        log_level: &str,
    ) -> Result<ApiGateway> {
        let dir = TempDir::new("mongomux-bench-dataapi")?;
        let user = cli(
            bin,
            &["user", "add", UPSTREAM_USER],
            Some(UPSTREAM_PASSWORD),
        )?;
        let keyed = cli(
            bin,
            &["api-key", "add", "bench", "--user", UPSTREAM_USER],
            None,
        )?;
        let key = keyed
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("# "))
            .context("no key in api-key add's output")?
            .to_string();
        let entry: String = keyed.lines().skip(2).map(|l| format!("{l}\n")).collect();
        let cfg = dir.path().join("gw.toml");
        std::fs::write(&cfg, format!("{user}{entry}"))?;
        let http = {
            let probe = TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let log = dir.path().join("mongomux.log");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--upstream=mongodb://{upstream}/?authSource=admin"))
            .arg(format!("--pool-size={pool_size}"))
            .arg(format!("--log-level={log_level}"))
            .arg(format!("--config={}", cfg.display()))
            .arg(format!("--data-api-listen={http}"))
            .env("MONGOMUX_UPSTREAM_USERNAME", UPSTREAM_USER)
            .env("MONGOMUX_UPSTREAM_PASSWORD", UPSTREAM_PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let wire = wait_listening_line(&mut child, &log, Duration::from_secs(30));
        let mut gw = ApiGateway {
            child,
            wire: SocketAddr::from(([127, 0, 0, 1], 0)),
            http,
            key,
            _dir: dir,
        };
        gw.wire = wire?;
        Ok(gw)
    }
}

/// The HTTP target: one keep-alive connection per worker.
struct HttpEndpoint {
    addr: SocketAddr,
    key: String,
    conns: Vec<SendRequest<Full<Bytes>>>,
    seq: Arc<AtomicU64>,
    docs: u64,
}

impl HttpEndpoint {
    async fn open(addr: SocketAddr, key: String, size: usize, docs: u64) -> Result<HttpEndpoint> {
        let mut conns = Vec::with_capacity(size);
        for _ in 0..size {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            conns.push(send);
        }
        Ok(HttpEndpoint {
            addr,
            key,
            conns,
            seq: Arc::new(AtomicU64::new(0)),
            docs,
        })
    }

    /// `total` findOne requests on `conc` connections; a failed request counts as an error.
    async fn round(&mut self, conc: u32, total: u64) -> Result<Round> {
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = self
            .conns
            .drain(..conc as usize)
            .map(|mut send| {
                let (next, seq, key, docs) =
                    (next.clone(), self.seq.clone(), self.key.clone(), self.docs);
                tokio::spawn(async move {
                    let mut round = empty_round();
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        let id =
                            doc_id(seq.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919) % docs);
                        let t0 = Instant::now();
                        let result =
                            tokio::time::timeout(OP_DEADLINE, find_one(&mut send, &key, &id)).await;
                        match result {
                            Ok(Ok(())) => round
                                .hist
                                .saturating_record((t0.elapsed().as_nanos() as u64).max(1)),
                            Ok(Err(e)) => {
                                round.errors += 1;
                                round.first_error.get_or_insert(format!("findOne: {e:#}"));
                            }
                            Err(_) => {
                                round.timed_out = true;
                                break;
                            }
                        }
                    }
                    (send, round)
                })
            })
            .collect();
        let mut round = empty_round();
        for t in futures::future::join_all(tasks).await {
            let (send, r) = t.expect("http worker panicked");
            round.hist.add(&r.hist).expect("same bounds");
            round.errors += r.errors;
            round.first_error = round.first_error.or(r.first_error);
            round.timed_out |= r.timed_out;
            self.conns.push(send);
        }
        round.elapsed = start.elapsed();
        ensure!(!round.timed_out, "a Data API request to {} hung", self.addr);
        Ok(round)
    }
}

fn empty_round() -> Round {
    Round {
        hist: new_histogram(),
        errors: 0,
        first_error: None,
        timed_out: false,
        elapsed: Duration::ZERO,
    }
}

async fn find_one(send: &mut SendRequest<Full<Bytes>>, key: &str, id: &str) -> Result<()> {
    let body = format!(
        r#"{{"dataSource":"bench","database":"{DB}","collection":"{FIND_COLL}","filter":{{"_id":"{id}"}}}}"#
    );
    let req = hyper::Request::post("/action/findOne")
        .header("host", "bench")
        .header("content-type", "application/json")
        .header("apikey", key)
        .body(Full::new(Bytes::from(body)))?;
    send.ready().await?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    ensure!(
        status == 200,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    ensure!(
        bytes.starts_with(br#"{"document":{"#),
        "no document: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(())
}

pub async fn run(args: DataApiArgs) -> Result<()> {
    let common = &args.common;
    let smoke = common.smoke;
    let pick =
        |v: Option<u64>, full: u64, small: u64| v.unwrap_or(if smoke { small } else { full });
    let levels = args
        .concurrency
        .clone()
        .unwrap_or(if smoke { vec![1, 4] } else { vec![1, 16] });
    let (ops, round_ops, docs) = (
        pick(args.ops, 5000, 200),
        pick(args.round_ops, 500, 50),
        100,
    );
    if levels.is_empty() || levels.contains(&0) || ops == 0 || round_ops == 0 {
        bail!("--concurrency, --ops and --round-ops must be at least 1");
    }
    let upstream = UpstreamProc::ferret(&common.ferretdb_bin()?).await?;
    seed(&upstream, docs).await?;
    let gw = ApiGateway::start(
        &common.gateway_bin()?,
        upstream.spec().addr,
        common.pool_size,
        &common.gateway_log_level,
    )?;
    let max_conc = *levels.iter().max().expect("checked") as usize;
    let mut wire = [
        Endpoint::open(upstream.direct_target(), max_conc, docs).await?,
        Endpoint::open(
            Target {
                name: "gateway-wire",
                addr: gw.wire,
                login: true,
                hello: true,
            },
            max_conc,
            docs,
        )
        .await?,
    ];
    let mut http = HttpEndpoint::open(gw.http, gw.key.clone(), max_conc, docs).await?;
    println!(
        "data-api: findOne over HTTP (keep-alive, API key) vs find by _id over the wire, direct and through \
         mongomux (pool {}, users on); {ops} ops per level and target in interleaved rounds of {round_ops}{}",
        common.pool_size,
        if smoke { " [smoke]" } else { "" }
    );
    let mut t = Table::new(&[
        "conc", "target", "ops", "errors", "p50_us", "p99_us", "mean_us", "ops/s",
    ]);
    let mut csv = Csv::new(&[
        "conc",
        "target",
        "ops",
        "errors",
        "p50_us",
        "p99_us",
        "mean_us",
        "ops_per_s",
    ]);
    for &conc in &levels {
        let mut tallies: Vec<Tally> = (0..3).map(|_| Tally::new()).collect();
        // Warm-up, unrecorded.
        for e in wire.iter_mut() {
            e.round(Op::Find, conc, u64::from(conc) * 20).await?;
        }
        http.round(conc, u64::from(conc) * 20).await?;
        let rounds = ops.div_ceil(round_ops);
        for i in 0..rounds {
            let n = round_ops.min(ops - i * round_ops);
            let mut order: Vec<usize> = (0..3).map(|k| (k + i as usize / 2) % 3).collect();
            if i % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let r = match k {
                    2 => http.round(conc, n).await?,
                    _ => wire[k].round(Op::Find, conc, n).await?,
                };
                if let Some(e) = &r.first_error {
                    eprintln!("  conc {conc} target {k}: {e} ({} errors)", r.errors);
                }
                let tally = &mut tallies[k];
                tally.hist.add(&r.hist).expect("same bounds");
                tally.errors += r.errors;
                tally.busy += r.elapsed;
            }
        }
        let names = ["direct-wire", "gateway-wire", "gateway-http"];
        let sums: Vec<Summary> = tallies.iter().map(Tally::summary).collect();
        for (name, s) in names.iter().zip(&sums) {
            let cells = vec![
                conc.to_string(),
                (*name).into(),
                s.ops.to_string(),
                s.errors.to_string(),
                us(s.p50_us),
                us(s.p99_us),
                us(s.mean_us),
                format!("{:.0}", s.ops_per_s),
            ];
            t.row(cells.clone());
            csv.row(cells);
        }
        for (label, base) in [("http - gateway-wire", 1), ("http - direct", 0)] {
            let (a, b) = (&sums[2], &sums[base]);
            t.row(vec![
                conc.to_string(),
                label.into(),
                String::new(),
                String::new(),
                signed(a.p50_us - b.p50_us),
                signed(a.p99_us - b.p99_us),
                signed(a.mean_us - b.mean_us),
                format!("{:+.0}", a.ops_per_s - b.ops_per_s),
            ]);
        }
        eprintln!("  done: concurrency {conc}");
    }
    println!("{}", t.render());
    let path = csv.write(&common.out_dir(), "data-api.csv")?;
    println!("csv: {}", path.display());
    Ok(())
}
