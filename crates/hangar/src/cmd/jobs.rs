//! `hangar jobs` and `hangar job ID`: the admin API as tables.
//!
//! Every listing says where it comes from (a debugger must never lie): these
//! are hangar's own records, read through the API of the server at `--url`.

use anyhow::Result;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hangar_api::{Client, JobQuery, JobView};
use hangar_types::{JobId, JobState, Timestamp};

#[derive(clap::Args)]
pub(crate) struct Remote {
    /// The running hangar's admin listener: `http://ADDR` or `unix:PATH`
    /// (`[server] admin_listen`).
    #[arg(long, env = "HANGAR_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// Admin API token (needed when `[server] api_token` is set).
    #[arg(long, env = "HANGAR_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only jobs in this state (waiting, queued, in_progress, completed).
    #[arg(long)]
    state: Option<JobState>,
    /// Only jobs of this repository (owner/name).
    #[arg(long)]
    repo: Option<String>,
    /// How many jobs to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Only jobs with an id below this one (the next page).
    #[arg(long)]
    before: Option<i64>,
}

#[derive(clap::Args)]
pub(crate) struct ViewArgs {
    #[command(flatten)]
    remote: Remote,
    /// The job id (GitHub's workflow_job.id).
    id: i64,
}

pub(crate) async fn list(args: ListArgs) -> Result<()> {
    let client = Client::new(&args.remote.url, args.remote.token.clone());
    let query = JobQuery {
        state: args.state,
        repository: args.repo,
        before: args.before.map(JobId),
        limit: Some(args.limit),
    };
    let page = client.job_list(&query).await?;
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    println!("Jobs recorded by hangar at {} (its database):", client.base());
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "JOB",
        "STATE",
        "REPOSITORY",
        "WORKFLOW / JOB",
        "LABELS",
        "RUNNER",
        "CONCLUSION",
        "QUEUED",
    ]);
    for job in &page.jobs {
        table.add_row([
            job.id.to_string(),
            job.state.to_string(),
            job.repository.clone(),
            workflow_and_job(job),
            job.labels.to_string(),
            job.runner_name.clone().unwrap_or_default(),
            job.conclusion.as_ref().map(ToString::to_string).unwrap_or_default(),
            time(job.received.queued.or(job.created_at)),
        ]);
    }
    println!("{table}");
    match page.next {
        Some(next) => println!("more: hangar jobs --before {next}"),
        None => println!("{} job(s)", page.jobs.len()),
    }
    Ok(())
}

pub(crate) async fn view(args: ViewArgs) -> Result<()> {
    let client = Client::new(&args.remote.url, args.remote.token.clone());
    let detail = client.job_view(JobId(args.id)).await?;
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(());
    }
    let job = &detail.job;
    println!("Job {} as recorded by hangar at {} (its database):", job.id, client.base());
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    let rows: [(&str, String); 14] = [
        ("state", job.state.to_string()),
        ("repository", job.repository.clone()),
        ("organization", job.organization.clone().unwrap_or_default()),
        ("workflow / job", workflow_and_job(job)),
        ("run", format!("{} attempt {}", job.run_id, job.run_attempt)),
        ("branch", job.head_branch.clone().unwrap_or_default()),
        ("labels", job.labels.to_string()),
        ("runner", runner(job)),
        ("conclusion", job.conclusion.as_ref().map(ToString::to_string).unwrap_or_default()),
        ("created (GitHub)", time(job.created_at)),
        ("started (GitHub)", time(job.started_at)),
        ("completed (GitHub)", time(job.completed_at)),
        ("received", received(job)),
        ("generation", job.generation.to_string()),
    ];
    for (key, value) in rows {
        table.add_row([key.to_owned(), value]);
    }
    println!("{table}");
    let lifecycle = &detail.lifecycle;
    if let Some(reason) = &lifecycle.reason {
        println!("Why no runner (scheduler): {reason}");
    }
    let phases = &lifecycle.phases;
    println!("Phases:");
    let mut phase_table = Table::new();
    phase_table.load_preset(UTF8_BORDERS_ONLY);
    for (name, at) in [
        ("created (GitHub)", phases.github_created_at),
        ("webhook received", phases.webhook_received),
        ("runner decided", phases.runner_decided),
        ("JIT config minted", phases.jit_minted),
        ("instance launched", phases.instance_launched),
        ("instance ready", phases.instance_ready),
        ("picked up", phases.picked_up),
        ("completed", phases.completed),
    ] {
        phase_table.add_row([name.to_owned(), time(at)]);
    }
    println!("{phase_table}");
    if !lifecycle.runners.is_empty() {
        let mut runners = Table::new();
        runners
            .load_preset(UTF8_BORDERS_ONLY)
            .set_header(["RUNNER", "POOL", "STATE", "RAN JOB", "REASON"]);
        for r in &lifecycle.runners {
            let ran = r.job.map(|j| j.to_string()).unwrap_or_default();
            runners.add_row([
                r.id.to_string(),
                r.pool.to_string(),
                r.state.to_string(),
                ran,
                r.reason.clone().unwrap_or_default(),
            ]);
        }
        println!("Runners (made for or ran this job):");
        println!("{runners}");
    }
    println!("Timeline (deliveries received):");
    let mut timeline = Table::new();
    timeline.load_preset(UTF8_BORDERS_ONLY).set_header(["RECEIVED", "EVENT", "ACTION", "DELIVERY"]);
    for entry in &detail.timeline {
        timeline.add_row([
            time(Some(entry.received_at)),
            entry.event.clone(),
            entry.action.clone().unwrap_or_default(),
            entry.delivery_id.to_string(),
        ]);
    }
    println!("{timeline}");
    Ok(())
}

fn workflow_and_job(job: &JobView) -> String {
    match &job.workflow_name {
        Some(workflow) => format!("{workflow} / {}", job.job_name),
        None => job.job_name.clone(),
    }
}

fn runner(job: &JobView) -> String {
    match (&job.runner_name, job.runner_id, &job.runner_group) {
        (Some(name), Some(id), Some(group)) => format!("{name} (id {id}, group {group})"),
        (Some(name), Some(id), None) => format!("{name} (id {id})"),
        _ => String::new(),
    }
}

fn received(job: &JobView) -> String {
    let r = &job.received;
    [
        ("waiting", r.waiting),
        ("queued", r.queued),
        ("in_progress", r.in_progress),
        ("completed", r.completed),
    ]
    .into_iter()
    .filter_map(|(name, at)| at.map(|at| format!("{name} {}", time(Some(at)))))
    .collect::<Vec<_>>()
    .join(", ")
}

fn time(at: Option<Timestamp>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()).unwrap_or_default()
}
