//! The `streamtoken` command line: run the service, manage keys, mint and verify offline.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::http::server::{stop_gracefully, Application};
use crate::http::tls::ServedCertificate;
use crate::keys::admin::{self, NewApiKey};
use crate::keys::keyring::{self, KeyringHandle};
use crate::keys::watch::{self, Fingerprint};
use crate::settings::Settings;
use crate::tenancy::api_keys::Scope;
use crate::tenancy::org::Org;
use crate::token::mint::{MintRequest, Minter};
use crate::token::params::{ExpiresIn, ReconnectGrace, SessionDuration, TokenType, Uses};
use crate::token::verify::TokenVerifier;

/// Mints short-lived, single-use tokens for streaming sessions. Configuration comes from
/// STREAMTOKEN_* environment variables (see README.md).
#[derive(Debug, Parser)]
#[command(name = "streamtoken", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve,
    /// Manage signing keys and API keys in STREAMTOKEN_KEYS_DIR.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Mint tokens offline with the keyring, one per line.
    Mint {
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "realtime")]
        token_type: String,
        /// Redemption window in seconds (1-3600).
        #[arg(long, default_value_t = 60)]
        ttl: u32,
        /// Longest session the token opens, in seconds (1-86400).
        #[arg(long, default_value_t = 3600)]
        max_session_duration: u32,
        /// Redemptions the token allows (1-100).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds a dropped session may be re-opened with the same token (0-600; single-use
        /// tokens). Default: STREAMTOKEN_RECONNECT_GRACE_SECONDS.
        #[arg(long)]
        reconnect_grace: Option<u32>,
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Verify a token offline and print its claims as JSON. Does not consume it.
    Verify { token: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a dev signing key and a dev API key (mint + redeem) where none exist.
    Init,
    /// Create an API key; prints it once, as the last line of output.
    AddApiKey {
        #[arg(long)]
        org: String,
        /// Repeat for several scopes. Default: mint.
        #[arg(long = "scope", value_enum)]
        scopes: Vec<ScopeArg>,
        #[arg(long, default_value = "")]
        name: String,
        /// Requests per minute allowed for this key (default: the org's default).
        #[arg(long)]
        rate_per_minute: Option<u32>,
        /// Credit balance for the org (default: unlimited).
        #[arg(long)]
        credits: Option<u64>,
        /// An operator key: redeems, introspects and reads usage of every org's tokens
        /// (default: only its own org's).
        #[arg(long)]
        any_org: bool,
    },
    /// Create a new random signing key.
    NewSigningKey {
        /// Also make it the key that signs new tokens.
        #[arg(long)]
        activate: bool,
    },
    /// Make an existing signing key the one that signs new tokens.
    Activate { kid: String },
    /// Remove an API key by the id `keys list` shows; running servers drop it on reload.
    RemoveApiKey { id: String },
    /// Delete a signing key (not the active one); its tokens stop verifying on reload.
    RemoveSigningKey { kid: String },
    /// List signing keys and API keys (never their secrets).
    List,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeArg {
    Mint,
    Redeem,
    Revoke,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Mint => Scope::Mint,
            ScopeArg::Redeem => Scope::Redeem,
            ScopeArg::Revoke => Scope::Revoke,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env()?;
    match cli.command {
        Command::Serve => serve(settings)?,
        Command::Keys { command } => keys(&settings, command)?,
        Command::Mint {
            org,
            token_type,
            ttl,
            max_session_duration,
            uses,
            reconnect_grace,
            count,
        } => {
            let request = MintRequest {
                token_type: TokenType::parse(&token_type)?,
                expires_in: ExpiresIn::parse(ttl.into())?,
                session: SessionDuration::parse(max_session_duration.into())?,
                uses: Uses::parse(uses.into())?,
                ctx: Default::default(),
                reconnect_grace: reconnect_grace
                    .map(|grace| ReconnectGrace::parse(grace.into()))
                    .transpose()?,
            };
            mint(&settings, &Org::parse(&org)?, request, count)?;
        }
        Command::Verify { token } => {
            let keyring = keyring::Keyring::load(&settings.keys_dir)?;
            match TokenVerifier::new(&settings.token).verify(&token, &keyring) {
                Ok(claims) => println!("{}", serde_json::to_string_pretty(&claims)?),
                Err(reason) => {
                    eprintln!("invalid token: {} ({})", reason.describe(), reason.as_str());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    crate::http::memory::fix_allocator_thresholds();
    actix_web::rt::System::new().block_on(async move {
        // Taken before the keyring loads, so a change made while the server starts is seen.
        let follow_keys = settings
            .keys_poll
            .map(|every| (every, Fingerprint::of(&settings.keys_dir)));
        let app = Application::build(settings).await?;
        let state = app.state();
        let counted = state.clone();
        let server = app.server_handle();
        let tls = app.tls();
        tokio::spawn(reload_on_sighup(state.keyring.clone(), tls.clone()));
        if let Some((every, seen)) = follow_keys {
            watch::follow_folder(&state.keyring, every, seen);
            // Certificates are rotated the way keys are (Secret volumes, cert-manager, an
            // ACME client): followed on the same interval, switched off by the same `0`.
            if let Some(tls) = &tls {
                tls.follow_files(every);
            }
        }
        tokio::spawn(async move {
            wait_for_termination().await;
            log::info!("shutting down: closing stream sessions, draining requests");
            stop_gracefully(&state, &server).await;
        });
        // Scripts and tests read this line to learn the port (STREAMTOKEN_BIND may use port 0).
        println!("streamtoken listening on {}", app.url());
        app.run_until_stopped()
            .await
            .context("running the server")?;
        // Minted counts summed in this process, not yet in the shared store.
        counted.store.flush().await;
        log::info!("stopped");
        Ok(())
    })
}

/// SIGTERM (orchestrators) or SIGINT (Ctrl-C).
async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut interrupt)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => {
            log::error!("cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `kill -HUP` re-reads the keys directory and the TLS files; a broken directory or pair leaves
/// the previous keyring or certificate in place.
async fn reload_on_sighup(keyring: Arc<KeyringHandle>, tls: Option<Arc<ServedCertificate>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        log::error!("cannot listen for SIGHUP; keys and certificates reload only on restart");
        return;
    };
    while hangups.recv().await.is_some() {
        keyring.reload_or_keep();
        if let Some(tls) = &tls {
            tls.reload_or_keep();
        }
    }
}

/// How a running server learns of a change the `keys` commands made.
const RUNNING_SERVERS: &str =
    "running servers reload the folder within STREAMTOKEN_KEYS_POLL_MS (or on SIGHUP)";

fn keys(settings: &Settings, command: KeysCommand) -> anyhow::Result<()> {
    let dir = &settings.keys_dir;
    match command {
        KeysCommand::Init => {
            let outcome = admin::init_dev(dir)?;
            if let Some(kid) = outcome.created_signing_key {
                println!("created signing key {kid} in {}", dir.display());
            }
            match outcome.created_api_key {
                Some(key) => {
                    println!("created dev API key (org \"dev\", scopes mint + redeem); it is shown only now:");
                    println!("{key}");
                }
                None => println!(
                    "API keys already exist in {} (stored as hashes; add one with `streamtoken keys add-api-key --org ORG`)",
                    dir.display()
                ),
            }
        }
        KeysCommand::AddApiKey {
            org,
            scopes,
            name,
            rate_per_minute,
            credits,
            any_org,
        } => {
            let scopes = if scopes.is_empty() {
                vec![Scope::Mint]
            } else {
                scopes.into_iter().map(Scope::from).collect()
            };
            let key = admin::add_api_key(
                dir,
                &NewApiKey {
                    org: Org::parse(&org)?,
                    name,
                    scopes,
                    rate_per_minute,
                    credits,
                    any_org,
                },
            )?;
            println!("{key}");
        }
        KeysCommand::NewSigningKey { activate } => {
            let kid = admin::new_signing_key(dir, activate)?;
            println!("{kid}");
        }
        KeysCommand::Activate { kid } => {
            admin::activate_signing_key(dir, &kid)?;
            println!("{kid} is now the active signing key; {RUNNING_SERVERS}");
        }
        KeysCommand::RemoveApiKey { id } => {
            admin::remove_api_key(dir, &id)?;
            println!("removed API key {id}; {RUNNING_SERVERS}");
        }
        KeysCommand::RemoveSigningKey { kid } => {
            admin::remove_signing_key(dir, &kid)?;
            println!("removed signing key {kid}; {RUNNING_SERVERS}");
        }
        KeysCommand::List => list(settings)?,
    }
    Ok(())
}

fn list(settings: &Settings) -> anyhow::Result<()> {
    let keyring = keyring::Keyring::load(&settings.keys_dir)?;
    let mut kids: Vec<&str> = keyring.kids().collect();
    kids.sort_unstable();
    println!("signing keys:");
    for kid in kids {
        let marker = if kid == keyring.active().kid() {
            " (active)"
        } else {
            ""
        };
        println!("  {kid}{marker}");
    }
    println!("api keys:");
    let file = keyring::read_api_keys_file(&settings.keys_dir.join(keyring::API_KEYS_FILE))?;
    for key in file.api_keys {
        let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
        let reach = if key.any_org { "  any-org" } else { "" };
        println!(
            "  {}  org={}  name={:?}  scopes={}{reach}  created={}",
            key.id,
            key.org,
            key.name,
            scopes.join(","),
            key.created_at
        );
    }
    Ok(())
}

fn mint(settings: &Settings, org: &Org, request: MintRequest, count: u64) -> anyhow::Result<()> {
    let keyring = Arc::new(KeyringHandle::load(&settings.keys_dir)?);
    let minter = Minter::new(keyring, settings.token.clone());
    let mut out = BufWriter::new(std::io::stdout().lock());
    for _ in 0..count {
        let minted = minter.mint(org, request.clone())?;
        writeln!(out, "{}", minted.token)?;
    }
    out.flush()?;
    Ok(())
}
