//! The `sluice` command: `sluice run -c FILE` serves, `sluice validate FILE...` checks
//! configs (exit 1 listing every error with its path), `sluice inject [FILE]` adds the sidecar
//! to Kubernetes workloads (src/inject/).

use clap::{Parser, Subcommand};
use sluice::inject::Provider;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: with 2,000 idle client connections opened and closed,
/// glibc kept the whole peak resident (+122 MiB), mimalloc most of it (+173 MiB), while
/// jemalloc's background threads give freed pages back to the OS within its decay time
/// (measured in tests/connections.rs; figures in the README's "Client connections" section).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// sluice: a sidecar reverse proxy for LLM API traffic.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config.
    Run {
        /// Config file (YAML).
        #[arg(short, long, default_value = "conf/sluice.yaml")]
        config: PathBuf,
    },
    /// Validate config files; prints every error with its path and exits 1 on any.
    Validate {
        /// Config files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Add sluice as a native sidecar to every workload in Kubernetes YAML and write it to
    /// stdout (all or nothing: on any refusal, every reason on stderr, exit 1, no output).
    /// Defaults come from deploy/k8s/base.
    Inject {
        /// Kubernetes YAML, one or more `---` documents; `-` or none: stdin.
        file: Option<PathBuf>,
        /// Sidecar image [default: the base's, sluice:0.1.0].
        #[arg(long)]
        image: Option<String>,
        /// ConfigMap holding sluice.yaml [default: sluice-config].
        #[arg(long)]
        configmap: Option<String>,
        /// Secret holding the provider-key files [default: sluice-provider-keys].
        #[arg(long)]
        secret: Option<String>,
        /// Proxy port the apps' base URLs name; must match the ConfigMap's listeners.proxy
        /// [default: 8080].
        #[arg(long)]
        proxy_port: Option<u16>,
        /// Admin port (probes, Prometheus); must match the ConfigMap's listeners.admin
        /// [default: 9090].
        #[arg(long)]
        admin_port: Option<u16>,
        /// Whose SDK base-URL variables to set on app containers, comma-separated, from
        /// openai, anthropic, gemini, ollama, bedrock [default: openai,anthropic].
        #[arg(long, value_delimiter = ',')]
        providers: Vec<Provider>,
        /// Largest input read, in bytes (a bigger input is refused).
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        max_input_bytes: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Inject {
            file,
            image,
            configmap,
            secret,
            proxy_port,
            admin_port,
            providers,
            max_input_bytes,
        } => {
            let opts = sluice::inject::Options {
                image,
                configmap,
                secret,
                proxy_port,
                admin_port,
                providers,
            };
            inject(file, &opts, max_input_bytes)
        }
        Command::Run { config } => match sluice::config::load_file(&config) {
            Ok(snapshot) => {
                sluice::logging::init(snapshot.log_format);
                sluice::logging::remember_keys(&snapshot);
                sluice::server::run(config, snapshot)
            }
            Err(errors) => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "sluice: invalid config {}:", config.display());
                for e in &errors.0 {
                    let _ = writeln!(err, "  {e}");
                }
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    let mut out = std::io::stderr().lock();
    for f in files {
        match sluice::config::validate_file(f) {
            Ok(_) => {
                let _ = writeln!(out, "{}: ok", f.display());
            }
            Err(errors) => {
                ok = false;
                let _ = writeln!(out, "{}: {} error(s)", f.display(), errors.0.len());
                for e in &errors.0 {
                    let _ = writeln!(out, "  {e}");
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `sluice inject`: reads the whole input (bounded), injects, then writes stdout only if every
/// document was accepted.
fn inject(file: Option<PathBuf>, opts: &sluice::inject::Options, max_bytes: u64) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let (source, reader): (String, Box<dyn Read>) = match file {
        Some(path) if path.as_os_str() != "-" => match std::fs::File::open(&path) {
            Ok(f) => (path.display().to_string(), Box::new(f)),
            Err(e) => {
                let _ = writeln!(err, "sluice inject: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        _ => ("<stdin>".to_owned(), Box::new(std::io::stdin().lock())),
    };
    let mut input = String::new();
    match reader
        .take(max_bytes.saturating_add(1))
        .read_to_string(&mut input)
    {
        Ok(n) if n as u64 > max_bytes => {
            let _ = writeln!(
                err,
                "sluice inject: {source}: larger than --max-input-bytes ({max_bytes})"
            );
            return ExitCode::FAILURE;
        }
        Ok(_) => {}
        Err(e) => {
            let _ = writeln!(err, "sluice inject: {source}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match sluice::inject::inject(&input, opts) {
        Ok(done) => {
            for w in &done.warnings {
                let _ = writeln!(err, "sluice inject: {source}: warning: {w}");
            }
            let _ = writeln!(
                err,
                "sluice inject: {source}: {} pod(s) injected, {} already had the sidecar",
                done.injected, done.already
            );
            let mut out = std::io::stdout().lock();
            match out
                .write_all(done.output.as_bytes())
                .and_then(|()| out.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(err, "sluice inject: writing stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(errors) => {
            let _ = writeln!(
                err,
                "sluice inject: {source}: refused, nothing written ({} error(s)):",
                errors.len()
            );
            for e in &errors {
                let _ = writeln!(err, "  {e}");
            }
            ExitCode::FAILURE
        }
    }
}
