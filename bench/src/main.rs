//! `sloguard-bench`: builds sloguard and the analytics backend, installs nginx, HAProxy and
//! redis-server if missing, runs the scenarios against every contender on 127.0.0.1, stops
//! everything it started, and writes BENCHMARKS.md and bench/results.json. See BENCHMARKS.md.

mod cgroup;
mod configs;
mod foreign;
mod loadgen;
mod micro;
mod procs;
mod redis;
mod report;
mod report_guard;
mod report_ratelimit;
mod report_sections;
mod scenarios;
mod setup;
mod stats;
mod sysinfo;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use scenarios::{
    incident, lifecycle, overhead, overload, ratelimit, say, soak, starved, Env, FleetKind, Plan,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks sloguard against direct, nginx and HAProxy on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// A ~2 minute smoke run: one round, short stretches.
    #[arg(long, global = true)]
    quick: bool,
    /// Do not pin (by default the generator runs on CPU 1, backend and proxies on CPU 0).
    #[arg(long, global = true)]
    no_pin: bool,
    /// Use the binaries already in target/release instead of running cargo build.
    #[arg(long, global = true)]
    no_build: bool,
    /// Never run apt-get; contenders whose proxy is missing are skipped.
    #[arg(long, global = true)]
    no_install: bool,
    /// Skip the criterion micro-benchmarks (`all` only).
    #[arg(long, global = true)]
    no_micro: bool,
    /// Keep the temp dir with the generated configs and every process's log.
    #[arg(long, global = true)]
    keep_temp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
enum Cmd {
    /// Every scenario and the micro-benchmarks; writes BENCHMARKS.md and bench/results.json.
    All,
    /// Scenario 1 only (prints its tables).
    Overhead,
    /// Scenario 2 only (prints its tables).
    Incident,
    /// Scenario 3 only (prints its tables), on `--fleet`.
    Overload {
        #[arg(long, value_enum, default_value_t = FleetArg::Both)]
        fleet: FleetArg,
    },
    /// Scenario 4 only, rate limits (prints its tables).
    Ratelimit,
    /// Memory per idle keep-alive client connection (2000 and 10 000) for sloguard, bare
    /// Pingora, nginx and HAProxy (prints its table).
    Conns,
    /// Workers on Unix sockets against TCP: the Python fleet through sloguard, nginx and
    /// HAProxy over each (prints its table).
    Uds,
    /// The starved-sidecar scenario only (sloguard under a 0.5 CPU quota), on `--fleet`.
    Starved {
        #[arg(long, value_enum, default_value_t = FleetArg::Both)]
        fleet: FleetArg,
    },
    /// The lifecycle scenario only (cold start, steady, reload, after idle), on `--fleet`.
    Lifecycle {
        #[arg(long, value_enum, default_value_t = FleetArg::Both)]
        fleet: FleetArg,
        /// Only the contenders whose name contains this (for a closer look at one).
        #[arg(long)]
        only: Option<String>,
        /// Offer this many requests/s instead of half the measured capacity (to compare
        /// two builds or policies at the same load; the capacity is not measured then).
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Not part of `all`: minutes of load at half the capacity with one fault a minute;
    /// prints a row a minute and writes bench/soak.json (and BENCHMARKS.md with --write).
    Soak {
        /// How many minutes (1 to 60).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
        minutes: u32,
        /// Seconds per "minute" (20 to 60), to try the fault schedule quickly.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(20..=60))]
        minute_secs: u64,
        /// Offered load, percent of the capacity measured first (10 to 60).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(10..=60))]
        load_percent: u32,
        /// Also write the `<!-- bench:soak -->` section of BENCHMARKS.md.
        #[arg(long)]
        write: bool,
    },
    /// Not a scenario: the on-call timelines of `tests/oncall.rs` (a real Prometheus with the
    /// shipped rules, the incident, sloguard's own failures and limits) at real time, where
    /// CI runs them 10 times faster: about 25 minutes. Prints what fired when, and what each
    /// dashboard panel showed.
    Oncall {
        /// 1 is the shipped rules at real time; up to 10 (CI's scale) runs faster.
        #[arg(long, default_value_t = 1)]
        time_scale: u64,
    },
    /// Not a scenario: closed-loop load on sloguard and nginx for `secs` each, printing
    /// throughput; with `--perf FILE`, sloguard (enforce) is recorded by `perf record -g`
    /// (and bare Pingora to `FILE.bare`).
    Profile {
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long)]
        perf: Option<String>,
        /// Also count each proxy's system calls and context switches per request
        /// (`perf stat` on a second, unmeasured pass).
        #[arg(long)]
        syscalls: bool,
        /// Also count per request under an open loop at this rate on 1250 client
        /// connections (the lifecycle scenario's traffic shape), against the Rust fleet.
        #[arg(long)]
        pool: Option<u32>,
    },
}

/// Which fleets a guard scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FleetArg {
    Rust,
    Python,
    Both,
}

impl FleetArg {
    fn kinds(self) -> Vec<FleetKind> {
        match self {
            FleetArg::Rust => vec![FleetKind::Rust],
            FleetArg::Python => vec![FleetKind::Python],
            FleetArg::Both => vec![FleetKind::Python, FleetKind::Rust],
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let root = setup::workspace_root();
    if let Cmd::Oncall { time_scale } = cli.command {
        return oncall(&root, time_scale);
    }
    if !cli.no_build {
        setup::build(&root)?;
    }
    let soak_run = matches!(cli.command, Cmd::Soak { .. });
    let (nginx, haproxy) = if soak_run || cli.command == Cmd::Ratelimit {
        (setup::find_tool("nginx"), setup::find_tool("haproxy"))
    } else {
        setup::proxies(!cli.no_install)
    };
    let redis = if soak_run || matches!(cli.command, Cmd::All | Cmd::Ratelimit) {
        setup::redis(!cli.no_install)
    } else {
        setup::find_tool("redis-server")
    };
    let mut failures = Vec::new();
    let micro = if cli.command == Cmd::All && !cli.no_micro {
        micro::run(&root, cli.quick).unwrap_or_else(|e| {
            failures.push(format!("micro-benchmarks: {e:#}"));
            Vec::new()
        })
    } else {
        Vec::new()
    };

    // Described before pinning, which would make us see a single core.
    let machine = sysinfo::describe(
        nginx.as_deref().and_then(|p| p.to_str()),
        haproxy.as_deref().and_then(|p| p.to_str()),
        redis.as_deref().and_then(|p| p.to_str()),
    );
    let cores = machine.nproc;
    let pin = (!cli.no_pin && cores >= 2).then_some((0, 1));
    let pinning = match pin {
        Some((sut, gen)) => {
            procs::pin_current_thread(gen).context("pinning the generator")?;
            format!(
                "load generator on CPU {gen}; backend and proxy on CPU {sut} (sched_setaffinity, \
                 as `taskset -c`); every proxy runs 1 thread/process"
            )
        }
        None => "none (--no-pin or a single core); every proxy runs 1 thread/process".into(),
    };
    let busy_before = busy_now();
    if busy_before > 0.2 {
        say(format!(
            "warning: the CPUs were {:.0}% busy before we started anything: the machine is not \
             quiet, numbers will be noisy",
            busy_before * 100.0
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the generator runtime")?;
    let target = setup::target_dir(&root).join("release");
    let template = std::fs::read_to_string(root.join("config/sloguard.toml"))
        .context("reading config/sloguard.toml")?;
    let env = Env::new(
        target.join("sloguard"),
        target.join("analytics-backend"),
        nginx.clone(),
        haproxy.clone(),
        redis.clone(),
        template,
        pin,
        Plan::new(cli.quick),
        rt,
    )?;
    say(format!("configs and logs in {}", env.dir.path().display()));

    if let Cmd::Profile {
        secs,
        perf,
        syscalls,
        pool,
    } = &cli.command
    {
        scenarios::profile::run(&env, *secs, perf.as_deref(), *syscalls, pool.map(f64::from))?;
        return Ok(());
    }
    if let Cmd::Soak {
        minutes,
        minute_secs,
        load_percent,
        write,
    } = cli.command
    {
        let ctx = soak::SoakContext {
            generated_at: now_utc(),
            command: command_line(&cli),
            pinning,
            busy_before,
            root: &root,
        };
        let plan = soak::SoakPlan {
            minutes,
            minute_secs,
            load_percent,
        };
        let result = soak::run(&env, plan, &ctx);
        if cli.keep_temp {
            say(format!(
                "configs and logs kept in {}",
                env.dir.keep().display()
            ));
        }
        let result = result?;
        let body = soak::section(&result);
        println!("\n## Soak\n\n{body}");
        if write {
            write_sections(&root, &[("soak", body)])?;
        }
        say(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
        return Ok(());
    }
    if let Cmd::Lifecycle { fleet, only, rate } = &cli.command {
        let l = lifecycle::run(&env, &fleet.kinds(), only.as_deref(), rate.map(f64::from));
        if cli.keep_temp {
            say(format!(
                "configs and logs kept in {}",
                env.dir.keep().display()
            ));
        }
        let l = l?;
        println!("\n## Lifecycle\n\n{}", report_guard::lifecycle(&l));
        say(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
        return Ok(());
    }
    let want = |c: Cmd| cli.command == Cmd::All || cli.command == c;
    let over = want(Cmd::Overhead)
        .then(|| attempt("overhead", &mut failures, || overhead::run(&env)))
        .flatten();
    let inc = want(Cmd::Incident)
        .then(|| attempt("stalled worker", &mut failures, || incident::run(&env)))
        .flatten();
    let ovl = match &cli.command {
        Cmd::All => Some(FleetArg::Both),
        Cmd::Overload { fleet } => Some(*fleet),
        _ => None,
    }
    .and_then(|f| {
        attempt("overload", &mut failures, || {
            overload::run(&env, &f.kinds())
        })
    });
    let starve = match &cli.command {
        Cmd::All => Some(FleetArg::Both),
        Cmd::Starved { fleet } => Some(*fleet),
        _ => None,
    }
    .and_then(|f| attempt("starved", &mut failures, || starved::run(&env, &f.kinds())));
    let life = (cli.command == Cmd::All)
        .then(|| {
            attempt("lifecycle", &mut failures, || {
                lifecycle::run(&env, &FleetArg::Both.kinds(), None, None)
            })
        })
        .flatten();
    let rl = want(Cmd::Ratelimit)
        .then(|| attempt("rate limits", &mut failures, || ratelimit::run(&env)))
        .flatten();
    let conns = want(Cmd::Conns)
        .then(|| {
            attempt("idle connections", &mut failures, || {
                scenarios::conns::run(&env)
            })
        })
        .flatten();
    let uds = want(Cmd::Uds)
        .then(|| attempt("unix sockets", &mut failures, || scenarios::uds::run(&env)))
        .flatten();
    let mut memory = Vec::new();
    memory.extend(over.iter().flat_map(|o| o.memory.clone()));
    memory.extend(inc.iter().flat_map(|i| i.memory.clone()));
    memory.extend(ovl.iter().flat_map(|o| o.memory.clone()));
    memory.extend(rl.iter().flat_map(|r| r.memory.clone()));

    let results = report::Results {
        generated_at: now_utc(),
        command: command_line(&cli),
        plan: env.plan.clone(),
        pinning,
        machine,
        busy_before,
        total_secs: started.elapsed().as_secs_f64().round(),
        overhead: over,
        incident: inc,
        overload: ovl,
        lifecycle: life,
        starved: starve,
        ratelimit: rl,
        conns,
        uds,
        memory,
        micro,
        failures,
    };
    let sections = report::sections(&results);
    for (name, body) in &sections {
        println!("\n## {name}\n\n{body}");
    }
    if cli.command == Cmd::All {
        write_outputs(&root, &results, &sections)?;
    }
    if cli.keep_temp {
        say(format!(
            "configs and logs kept in {}",
            env.dir.keep().display()
        ));
    }
    say(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

fn write_outputs(
    root: &std::path::Path,
    results: &report::Results,
    sections: &[(&str, String)],
) -> anyhow::Result<()> {
    let json_path = root.join("bench/results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    write_sections(root, sections)?;
    say(format!("wrote {}", json_path.display()));
    Ok(())
}

/// Fills sections of BENCHMARKS.md between their markers (a missing pair is reported).
fn write_sections(root: &std::path::Path, sections: &[(&str, String)]) -> anyhow::Result<()> {
    let md_path: PathBuf = root.join("BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&md_path).unwrap_or_else(|_| report::SKELETON.into());
    for (name, body) in sections {
        match report::fill(&doc, name, body) {
            Some(d) => doc = d,
            None => say(format!(
                "BENCHMARKS.md has no `<!-- bench:{name} -->` markers; section not written"
            )),
        }
    }
    std::fs::write(&md_path, doc).with_context(|| format!("writing {}", md_path.display()))?;
    say(format!("wrote {}", md_path.display()));
    Ok(())
}

/// Runs one part; a failure is reported and recorded, and the run goes on.
fn attempt<T>(
    name: &str,
    failures: &mut Vec<String>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> Option<T> {
    match f() {
        Ok(v) => Some(v),
        Err(e) => {
            say(format!("{name} failed: {e:#}"));
            failures.push(format!("{name}: {e:#}"));
            None
        }
    }
}

/// Busy share of all CPUs over one second (/proc/stat).
fn busy_now() -> f64 {
    let before = sysinfo::cpu_times();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let shares = sysinfo::busy_shares(&before, &sysinfo::cpu_times());
    shares.iter().sum::<f64>() / shares.len().max(1) as f64
}

/// Runs the on-call timelines (the integration test, release build) with the alert rules at
/// `time_scale` (1 = real time). The timelines are written once, in the test; this only
/// runs them at the scale CI cannot afford.
fn oncall(root: &std::path::Path, time_scale: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=10).contains(&time_scale),
        "--time-scale must be 1 to 10, not {time_scale}"
    );
    say(format!(
        "oncall: the timelines with the rules at 1/{time_scale} of real time (CI: 1/10)"
    ));
    let status = std::process::Command::new(setup::cargo())
        .args(["test", "--release", "-p", "sloguard", "--test", "oncall"])
        .args(["--", "--nocapture"])
        .env("SLOGUARD_ONCALL_TIME_SCALE", time_scale.to_string())
        .current_dir(root)
        .status()
        .context("running cargo test")?;
    anyhow::ensure!(status.success(), "the on-call timelines failed ({status})");
    Ok(())
}

fn command_line(cli: &Cli) -> String {
    let mut s = String::from("cargo run --release -p sloguard-bench -- ");
    s += match cli.command {
        Cmd::All => "all",
        Cmd::Overhead => "overhead",
        Cmd::Incident => "incident",
        Cmd::Overload { .. } => "overload",
        Cmd::Ratelimit => "ratelimit",
        Cmd::Conns => "conns",
        Cmd::Uds => "uds",
        Cmd::Lifecycle { .. } => "lifecycle",
        Cmd::Starved { .. } => "starved",
        Cmd::Profile { .. } => "profile",
        Cmd::Soak { .. } => "soak",
        Cmd::Oncall { .. } => "oncall",
    };
    if let Cmd::Soak {
        minutes,
        minute_secs,
        load_percent,
        ..
    } = cli.command
    {
        s += &format!(" --minutes {minutes}");
        if minute_secs != 60 {
            s += &format!(" --minute-secs {minute_secs}");
        }
        if load_percent != 50 {
            s += &format!(" --load-percent {load_percent}");
        }
    }
    for (on, flag) in [
        (cli.quick, " --quick"),
        (cli.no_pin, " --no-pin"),
        (cli.no_build, " --no-build"),
        (cli.no_install, " --no-install"),
        (cli.no_micro, " --no-micro"),
        (cli.keep_temp, " --keep-temp"),
    ] {
        if on {
            s += flag;
        }
    }
    s
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
