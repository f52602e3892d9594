//! A git worktree per task, with real processes and real git: parallel
//! tasks that edit the same file, diff, merge (fast-forward, conflict,
//! dirty checkout, a killed merge), discard, delete, review, the setup
//! step, and kills of the primary while a worktree is made and used.

mod common;

use common::{DEADLINE, Grove, message_text, show, updates, wait_for, wait_status};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "grove test"),
    ("GIT_AUTHOR_EMAIL", "test@grove.invalid"),
    ("GIT_COMMITTER_NAME", "grove test"),
    ("GIT_COMMITTER_EMAIL", "test@grove.invalid"),
];

/// `git` in `dir` with the test identity, never the user's global config.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(IDENTITY)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A workspace that is a git repository with one commit (`f.txt`), a
/// member serving it, git's identity in every grove process's env.
fn repo(config: &str) -> Grove {
    let mut g = Grove::with_config(&format!("heartbeat_ms = 100\n{config}"));
    init_repo(&mut g);
    g.serve();
    g.wait_primary();
    g
}

fn init_repo(g: &mut Grove) {
    for (k, v) in IDENTITY {
        g.env(k, v);
    }
    g.env("GIT_CONFIG_GLOBAL", "/dev/null");
    git(&g.ws, &["init", "-q", "-b", "main"]);
    std::fs::write(g.ws.join("f.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(g.ws.join(".gitignore"), ".grove/\n.env\n").unwrap();
    git(&g.ws, &["add", "f.txt", ".gitignore"]);
    git(&g.ws, &["commit", "-q", "-m", "start"]);
}

fn spawn(g: &Grove, args: &[&str]) -> Value {
    let mut all = vec!["spawn", "--json"];
    all.extend(args);
    serde_json::from_str(&g.ok(&all)).expect("spawn --json")
}

fn id_of(t: &Value) -> String {
    t["id"].as_str().unwrap().to_string()
}

fn tree_of(g: &Grove, t: &Value) -> PathBuf {
    g.ws.join(t["worktree"]["path"].as_str().expect("a worktree"))
}

fn branch_of(t: &Value) -> String {
    t["worktree"]["branch"].as_str().unwrap().to_string()
}

fn branch_exists(g: &Grove, branch: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(&g.ws)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"))
        .output()
        .unwrap()
        .status
        .success()
}

/// The checkout has no change to a tracked file and is not mid-merge.
fn assert_clean(g: &Grove) {
    assert_eq!(
        git(&g.ws, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );
    assert!(!g.ws.join(".git/MERGE_HEAD").exists(), "left mid-merge");
}

/// Registered worktrees as `git worktree list --porcelain` blocks.
fn worktrees(g: &Grove) -> Vec<String> {
    git(&g.ws, &["worktree", "list", "--porcelain"])
        .split("\n\n")
        .map(str::to_string)
        .collect()
}

/// `grove ARGS` fails (exit 1) saying `what`; its stderr.
fn fails_saying(g: &Grove, args: &[&str], what: &str) -> String {
    let out = g.run(args);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(what), "{args:?}: {err}");
    err
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn parallel_tasks_on_one_file_merge_fast_forward_then_conflict_then_discard() {
    let g = repo("");
    let a = spawn(
        &g,
        &["--worktree", "printf 'one\\nTWO by a\\nthree\\n' > f.txt"],
    );
    let b = spawn(
        &g,
        &["--worktree", "printf 'one\\nTWO by b\\nthree\\n' > f.txt"],
    );
    for t in [&a, &b] {
        wait_status(&g, &id_of(t), "completed");
        assert!(tree_of(&g, t).join("f.txt").exists());
    }
    // Each edited its own copy; the workspace's is untouched.
    assert_eq!(
        std::fs::read_to_string(g.ws.join("f.txt")).unwrap(),
        "one\ntwo\nthree\n"
    );
    let stat: Value =
        serde_json::from_str(&g.ok(&["diff", &id_of(&a), "--stat", "--json"])).unwrap();
    assert_eq!(stat["files"][0]["path"], "f.txt");
    let patch = g.ok(&["diff", &id_of(&b)]);
    assert!(patch.contains("+TWO by b"), "{patch}");

    let main_before = git(&g.ws, &["rev-parse", "main"]);
    // An empty message is refused before anything moves, as git would.
    let out = g.run(&["merge", &id_of(&a), "--squash", "-m", " "]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(git(&g.ws, &["rev-parse", "main"]), main_before);
    let merged: Value = serde_json::from_str(&g.ok(&["merge", &id_of(&a), "--json"])).unwrap();
    assert_eq!(merged["result"], "fast_forward", "{merged}");
    assert_eq!(
        git(&g.ws, &["rev-parse", "main"]),
        git(&g.ws, &["rev-parse", &branch_of(&a)])
    );
    assert_ne!(git(&g.ws, &["rev-parse", "main"]), main_before);
    assert_eq!(
        std::fs::read_to_string(g.ws.join("f.txt")).unwrap(),
        "one\nTWO by a\nthree\n"
    );
    assert_clean(&g);

    let main_after_a = git(&g.ws, &["rev-parse", "main"]);
    fails_saying(&g, &["merge", &id_of(&b)], "conflicts in:\n  f.txt");
    assert_eq!(git(&g.ws, &["rev-parse", "main"]), main_after_a);
    assert_eq!(
        std::fs::read_to_string(g.ws.join("f.txt")).unwrap(),
        "one\nTWO by a\nthree\n"
    );
    assert_clean(&g);
    assert!(
        branch_exists(&g, &branch_of(&b)),
        "the conflicting branch is kept"
    );

    let said = g.ok(&["discard", &id_of(&b)]);
    assert!(said.starts_with("removed"), "{said}");
    assert!(!tree_of(&g, &b).exists());
    assert!(!branch_exists(&g, &branch_of(&b)));
    assert!(!worktrees(&g).iter().any(|w| w.contains(&id_of(&b))));
    // Again: nothing is left, and it says so.
    let again = g.ok(&["discard", &id_of(&b)]);
    assert!(again.contains("gone already"), "{again}");
}

#[test]
fn setup_copies_env_and_runs_its_command_in_the_worktree() {
    let g = repo(
        "[setup]\ncopy = [\".env\", \"missing.txt\"]\nrun = \"echo setup ran > from-setup.txt; echo SETUP-OUTPUT\"\n",
    );
    std::fs::write(g.ws.join(".env"), "SECRET=42\n").unwrap();
    let t = spawn(
        &g,
        &[
            "--worktree",
            "test -f from-setup.txt && cat .env > seen.txt",
        ],
    );
    wait_status(&g, &id_of(&t), "completed");
    let tree = tree_of(&g, &t);
    assert_eq!(
        std::fs::read_to_string(tree.join("seen.txt")).unwrap(),
        "SECRET=42\n"
    );
    let log = g.ok(&["logs", &id_of(&t)]);
    assert!(log.contains("copied .env"), "{log}");
    assert!(log.contains("missing.txt is not in the workspace"), "{log}");
    assert!(log.contains("SETUP-OUTPUT"), "{log}");
    // The copied .env is configuration, not the task's work.
    let diff = g.ok(&["diff", &id_of(&t), "--stat"]);
    assert!(
        diff.contains("seen.txt") && !diff.contains(".env"),
        "{diff}"
    );

    // A failing setup fails the task before its agent starts.
    std::fs::write(
        g.ws.join(".grove/grove.toml"),
        "heartbeat_ms = 100\n[setup]\nrun = \"exit 3\"\n",
    )
    .unwrap();
    let t = spawn(&g, &["--worktree", "touch agent-ran"]);
    let done = wait_status(&g, &id_of(&t), "failed");
    assert_eq!(done["failure_reason"], "spawn_error", "{done}");
    assert!(!tree_of(&g, &t).join("agent-ran").exists());
}

#[test]
fn a_workspace_that_is_not_a_git_repository_is_refused_at_spawn() {
    let mut g = Grove::new();
    g.serve();
    g.wait_primary();
    let out = g.run(&["spawn", "--worktree", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("not a git repository"),
        "{}",
        stderr_of(&out)
    );
    // No fallback: no task was created.
    assert_eq!(g.ok(&["list"]), "");
    // The config default too.
    std::fs::write(
        g.ws.join(".grove/grove.toml"),
        "heartbeat_ms = 100\nworktree = \"always\"\n",
    )
    .unwrap();
    let out = g.run(&["spawn", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    // ... unless the spawn says no.
    g.ok(&["spawn", "--no-worktree", "true"]);
}

#[test]
fn an_unknown_base_is_refused_and_a_branch_base_is_recorded_as_its_commit() {
    let g = repo("");
    let out = g.run(&["spawn", "--base", "no-such-branch", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("no-such-branch"),
        "{}",
        stderr_of(&out)
    );
    let t = spawn(&g, &["--base", "main", "true"]);
    assert_eq!(t["worktree"]["base"], git(&g.ws, &["rev-parse", "main"]));
}

#[test]
fn a_dirty_checkout_is_refused_at_merge_and_left_as_it_was() {
    let g = repo("");
    let t = spawn(&g, &["--worktree", "echo four >> f.txt"]);
    wait_status(&g, &id_of(&t), "completed");
    std::fs::write(g.ws.join("f.txt"), "my own edit\n").unwrap();
    let main_before = git(&g.ws, &["rev-parse", "main"]);
    fails_saying(&g, &["merge", &id_of(&t)], "uncommitted changes (f.txt)");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("f.txt")).unwrap(),
        "my own edit\n"
    );
    assert_eq!(git(&g.ws, &["rev-parse", "main"]), main_before);
    assert!(!g.ws.join(".git/MERGE_HEAD").exists());
}

/// git's own checkout update overwrites ignored files; a merge must not
/// replace what only the user's checkout holds (here a local `.env`, and an
/// ignored file where the merge needs a directory).
#[test]
fn a_merge_never_overwrites_ignored_files_of_the_checkout() {
    let g = repo("");
    let t = spawn(
        &g,
        &[
            "--worktree",
            "printf TASK > .env && mkdir build.conf && printf T > build.conf/x \
             && git add -f .env build.conf/x && git commit -qm 'env and conf'",
        ],
    );
    wait_status(&g, &id_of(&t), "completed");
    std::fs::write(g.ws.join(".env"), "MINE").unwrap();
    std::fs::write(g.ws.join(".git/info/exclude"), "build.conf\n").unwrap();
    std::fs::write(g.ws.join("build.conf"), "MY CONF").unwrap();
    let main_before = git(&g.ws, &["rev-parse", "main"]);
    let out = g.run(&["merge", &id_of(&t)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("untracked (ignored by git): .env, build.conf;"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(g.ws.join(".env")).unwrap(), "MINE");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("build.conf")).unwrap(),
        "MY CONF"
    );
    assert_eq!(git(&g.ws, &["rev-parse", "main"]), main_before);

    // Moved away, the merge goes through and brings the task's files.
    std::fs::remove_file(g.ws.join(".env")).unwrap();
    std::fs::remove_file(g.ws.join("build.conf")).unwrap();
    g.ok(&["merge", &id_of(&t)]);
    assert_eq!(std::fs::read_to_string(g.ws.join(".env")).unwrap(), "TASK");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("build.conf/x")).unwrap(),
        "T"
    );
    assert_clean(&g);
}

/// A task that replaces a tracked directory with a file merges (its tracked
/// files are not "in the way"), unless the directory holds an ignored file
/// of the user's; an ignored file whose name is not UTF-8 is seen too.
#[test]
fn a_merge_tells_tracked_from_ignored_files_in_the_way() {
    use std::os::unix::ffi::OsStrExt;
    let g = repo("");
    std::fs::create_dir(g.ws.join("vendor")).unwrap();
    std::fs::write(g.ws.join("vendor/a.txt"), "a").unwrap();
    git(&g.ws, &["add", "vendor/a.txt"]);
    git(&g.ws, &["commit", "-qm", "vendor"]);
    let odd = std::ffi::OsStr::from_bytes(b"n\xe9.local");
    let t = spawn(
        &g,
        &[
            "--worktree",
            "git rm -q -r vendor && printf F > vendor && printf T > \"$(printf 'n\\351.local')\" \
             && git add -f vendor \"$(printf 'n\\351.local')\" && git commit -qm flat",
        ],
    );
    wait_status(&g, &id_of(&t), "completed");

    // The user's ignored files: one inside the directory, one with the odd name.
    std::fs::write(g.ws.join(".git/info/exclude"), "*.local\nvendor/.cache\n").unwrap();
    std::fs::write(g.ws.join("vendor/.cache"), "MY CACHE").unwrap();
    std::fs::write(g.ws.join(odd), "SECRET").unwrap();
    let out = g.run(&["merge", &id_of(&t)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("vendor") && err.contains(".local"), "{err}");
    assert_eq!(std::fs::read_to_string(g.ws.join(odd)).unwrap(), "SECRET");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("vendor/.cache")).unwrap(),
        "MY CACHE"
    );

    // Only tracked files in the way: the merge goes through.
    std::fs::remove_file(g.ws.join("vendor/.cache")).unwrap();
    std::fs::remove_file(g.ws.join(odd)).unwrap();
    g.ok(&["merge", &id_of(&t)]);
    assert_eq!(std::fs::read_to_string(g.ws.join("vendor")).unwrap(), "F");
    assert_eq!(std::fs::read_to_string(g.ws.join(odd)).unwrap(), "T");
    assert_clean(&g);
}

#[test]
fn a_merge_killed_before_it_moves_anything_leaves_no_trace() {
    let g = repo("");
    let t = spawn(&g, &["--worktree", "echo new > g.txt"]);
    wait_status(&g, &id_of(&t), "completed");
    // main moves on meanwhile: the merge needs a merge commit.
    std::fs::write(g.ws.join("h.txt"), "h\n").unwrap();
    git(&g.ws, &["add", "h.txt"]);
    git(&g.ws, &["commit", "-q", "-m", "meanwhile"]);
    let main_before = git(&g.ws, &["rev-parse", "main"]);

    let err = g.dir.path().join("merge.err");
    let mut merging = Command::new(common::BIN)
        .args(["merge", &id_of(&t), "--workspace"])
        .arg(&g.ws)
        .envs(IDENTITY)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GROVE_NO_AUTOSTART", "1")
        .env(grove::test_hooks::MERGE_STALL_ENV, "60000")
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for("the merge prepared", DEADLINE, || {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        text.contains("merge prepared").then_some(())
    });
    // The task's leftovers were committed on its branch by now.
    let branch_head = git(&g.ws, &["rev-parse", &branch_of(&t)]);
    merging.kill().unwrap();
    merging.wait().unwrap();

    assert_eq!(
        git(&g.ws, &["rev-parse", "main"]),
        main_before,
        "main moved"
    );
    assert_eq!(git(&g.ws, &["rev-parse", &branch_of(&t)]), branch_head);
    assert_clean(&g);
    assert!(!g.ws.join("g.txt").exists());

    // The lock died with it: the next merge goes through.
    let merged: Value = serde_json::from_str(&g.ok(&["merge", &id_of(&t), "--json"])).unwrap();
    assert_eq!(merged["result"], "merge_commit", "{merged}");
    assert_eq!(
        std::fs::read_to_string(g.ws.join("g.txt")).unwrap(),
        "new\n"
    );
    assert_clean(&g);
}

/// A shell loop that waits for `file` to exist.
fn wait_for_file(file: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.05; done", file.display())
}

#[test]
fn kill_9_of_the_primary_while_the_worktree_is_set_up_and_while_the_agent_runs() {
    let mut g = repo("");
    let gate = g.dir.path().join("setup-go");
    let agent_gate = g.dir.path().join("agent-go");
    let started = g.dir.path().join("setup-started");
    std::fs::write(
        g.ws.join(".grove/grove.toml"),
        format!(
            "heartbeat_ms = 100\n[setup]\nrun = \"touch '{}'; {}\"\n",
            started.display(),
            wait_for_file(&gate)
        ),
    )
    .unwrap();
    let prompt = format!(
        "echo by-agent > f.txt; touch agent-started; {}; echo done >> f.txt",
        wait_for_file(&agent_gate)
    );
    let t = spawn(&g, &["--worktree", &prompt]);
    let id = id_of(&t);
    wait_for("the setup running", DEADLINE, || {
        started.exists().then_some(())
    });

    let (pid, epoch) = g.wait_primary();
    g.member_by_pid(pid).signal(libc::SIGKILL);
    g.serve();
    let (pid, epoch) = g.wait_new_primary(pid, epoch);
    std::fs::write(&gate, "").unwrap();
    let tree = tree_of(&g, &t);
    wait_for("the agent running in the worktree", DEADLINE, || {
        tree.join("agent-started").exists().then_some(())
    });

    g.member_by_pid(pid).signal(libc::SIGKILL);
    g.serve();
    g.wait_new_primary(pid, epoch);
    std::fs::write(&agent_gate, "").unwrap();
    let done = wait_status(&g, &id, "completed");
    assert_eq!(done["attempt"], 1);

    assert_eq!(
        std::fs::read_to_string(tree.join("f.txt")).unwrap(),
        "by-agent\ndone\n"
    );
    let entry = worktrees(&g)
        .into_iter()
        .find(|w| w.contains(&id))
        .expect("the worktree is registered");
    assert!(
        entry.contains(&format!("branch refs/heads/{}", branch_of(&t))),
        "{entry}"
    );
    assert!(
        !entry.contains("locked") && !entry.contains("prunable"),
        "{entry}"
    );
    // Exactly one branch for the task, at the base until merged.
    let branches = git(&g.ws, &["branch", "--list", "grove/*"]);
    assert_eq!(branches.lines().count(), 1, "{branches}");
}

#[test]
fn a_half_made_worktree_is_repaired_by_the_next_run() {
    let g = repo("");
    let gate = g.dir.path().join("go");
    let blocker = spawn(&g, &[&wait_for_file(&gate)]);
    let t = spawn(
        &g,
        &[
            "--worktree",
            "--dep",
            &id_of(&blocker),
            "echo fixed > f.txt",
        ],
    );
    let tree = tree_of(&g, &t);
    // What a supervisor killed inside `git worktree add -b` leaves: the
    // branch made, the directory half there, and git still marking the
    // worktree `locked initializing`.
    git(&g.ws, &["branch", &branch_of(&t), "main"]);
    git(
        &g.ws,
        &[
            "worktree",
            "add",
            "-q",
            "--lock",
            "--reason",
            "initializing",
            tree.to_str().unwrap(),
            &branch_of(&t),
        ],
    );
    std::fs::write(tree.join("f.txt"), "half written").unwrap();
    std::fs::write(&gate, "").unwrap();
    wait_status(&g, &id_of(&t), "completed");
    assert_eq!(
        std::fs::read_to_string(tree.join("f.txt")).unwrap(),
        "fixed\n"
    );
    let entry = worktrees(&g)
        .into_iter()
        .find(|w| w.contains(&id_of(&t)))
        .unwrap();
    assert!(
        entry.contains(&format!("branch refs/heads/{}", branch_of(&t))),
        "{entry}"
    );
    assert_eq!(
        git(&g.ws, &["branch", "--list", "grove/*"]).lines().count(),
        1
    );
}

#[test]
fn delete_and_purge_refuse_unmerged_work_without_force_and_remove_the_worktree() {
    let g = repo("");
    let t = spawn(&g, &["--worktree", "echo work > w.txt"]);
    let id = id_of(&t);
    wait_status(&g, &id, "completed");
    fails_saying(&g, &["delete", &id], "never merged");
    assert!(tree_of(&g, &t).exists());
    let out = g.run(&["purge", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    g.ok(&["purge", &id, "--force"]);
    assert!(!tree_of(&g, &t).exists());
    assert!(!branch_exists(&g, &branch_of(&t)));

    // Merged work goes without --force.
    let t = spawn(&g, &["--worktree", "echo merged > m.txt"]);
    wait_status(&g, &id_of(&t), "completed");
    g.ok(&["merge", &id_of(&t)]);
    g.ok(&["delete", &id_of(&t)]);
    assert!(!tree_of(&g, &t).exists());
    assert!(!branch_exists(&g, &branch_of(&t)));
}

/// A cancelled task's agent lives on for the kill grace and may write on:
/// discarding its worktree meanwhile let it recreate the directory, where
/// git found the workspace's own repository and committed the user's
/// uncommitted edit onto main. `discard` now waits for the run to end, and
/// git in a worktree task never looks above `.grove/worktrees`.
#[test]
fn discard_after_cancel_waits_for_the_agent_and_git_never_reaches_main() {
    let g = repo("kill_grace_ms = 10000\n");
    let head = git(&g.ws, &["rev-parse", "main"]);
    let pid_file = g.ws.join("agent.pid");
    // After the TERM it writes and commits ten more times and exits by
    // itself, well within the grace: a git it runs gets the TERM too and
    // removes its locks (a KILL mid-commit would leave them).
    let script = format!(
        "echo $$ > '{}'; echo ceiling=$GIT_CEILING_DIRECTORIES; stop=0; trap 'stop=1' TERM; \
         D=$PWD; n=0; while [ $n -lt 10 ]; do [ $stop = 1 ] && n=$((n+1)); mkdir -p $D; \
         echo work >> $D/agent.txt; git -C $D add -A; \
         git -C $D commit -qm checkpoint >/dev/null 2>&1; sleep 0.05; done",
        pid_file.display()
    );
    let t = spawn(&g, &["--worktree", &script]);
    let id = id_of(&t);
    let branch = branch_of(&t);
    wait_for("the agent's first commit", DEADLINE, || {
        let log = branch_exists(&g, &branch).then(|| git(&g.ws, &["log", "--oneline", &branch]));
        log.filter(|l| l.lines().count() > 1).map(|_| ())
    });
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    std::fs::write(g.ws.join("f.txt"), "the user's unfinished edit\n").unwrap();
    g.ok(&["cancel", &id]);
    g.ok(&["discard", &id]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "discard returned while the agent ran"
    );
    assert!(!tree_of(&g, &t).exists(), "the worktree came back");
    assert_eq!(git(&g.ws, &["rev-parse", "main"]), head, "main moved");
    let log = std::fs::read_to_string(g.ws.join(format!(".grove/logs/{id}.log"))).unwrap();
    let worktrees = g.ws.join(".grove/worktrees");
    assert!(
        log.contains(&format!("ceiling={}", worktrees.display())),
        "{log}"
    );
}

#[test]
fn review_relaunches_a_cli_task_in_its_worktree_with_the_quoted_lines() {
    // A CLI agent: its prompt is words it reads (kept in prompt.txt), not
    // a command line.
    let g = repo(
        "[engines.reader]\ncommand = [\"sh\", \"-c\", \"echo run >> runs.txt; printf '%s' \\\"$1\\\" > prompt.txt\", \"sh\", \"{prompt}\"]\n\
         [engines.bashy]\ncommand = [\"bash\", \"-c\", \"{prompt}\"]\n",
    );
    let t = spawn(&g, &["--worktree", "-e", "reader", "add a line"]);
    let id = id_of(&t);
    wait_status(&g, &id, "completed");
    // A shell task's prompt is a command: a review's words would run.
    let sh = spawn(&g, &["--worktree", "echo hi > f.txt"]);
    wait_status(&g, &id_of(&sh), "completed");
    let out = g.run(&["review", &id_of(&sh), "--comment", "f.txt:1", "rm -rf ~"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("shell engine"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(show(&g, &id_of(&sh))["prompt"], "echo hi > f.txt");
    // So is the prompt of an engine of the user's that hands it to a shell.
    let bashy = spawn(&g, &["--worktree", "-e", "bashy", "echo hi > g.txt"]);
    wait_status(&g, &id_of(&bashy), "completed");
    let out = g.run(&["review", &id_of(&bashy), "--comment", "g.txt:1", "rm -rf ~"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("hands its prompt to a shell as code"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(show(&g, &id_of(&bashy))["prompt"], "echo hi > g.txt");
    g.ok(&[
        "review",
        &id,
        "--comment",
        "f.txt:2-3",
        "say why",
        "--comment",
        "runs.txt:1",
        "once is enough",
    ]);
    wait_for("the rerun", DEADLINE, || {
        let t = show(&g, &id);
        (t["status"] == "completed" && t["run_id"].is_string()).then_some(())
    });
    let prompt = show(&g, &id)["prompt"].as_str().unwrap().to_string();
    assert!(
        prompt.contains("f.txt, lines 2-3:\n    2 | two\n    3 | three\nsay why"),
        "{prompt}"
    );
    assert!(
        prompt.contains("runs.txt, line 1:\n    1 | run\nonce is enough"),
        "{prompt}"
    );
    // Same task, same worktree: the second run appended to the first's
    // file, and its agent read the comments.
    wait_for("two runs in one worktree", DEADLINE, || {
        let text = std::fs::read_to_string(tree_of(&g, &t).join("runs.txt")).ok()?;
        (text == "run\nrun\n").then_some(())
    });
    let read = std::fs::read_to_string(tree_of(&g, &t).join("prompt.txt")).unwrap();
    assert!(read.contains("once is enough"), "{read}");
    let out = g.run(&["review", &id, "--comment", "f.txt:9-10", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
}

#[test]
fn twenty_worktree_tasks_at_once() {
    let g = repo("max_parallel = 20\n");
    let tasks: Vec<Value> = (0..20)
        .map(|i| {
            spawn(
                &g,
                &[
                    "--worktree",
                    &format!("echo {i} > f.txt; echo {i} > own-{i}.txt"),
                ],
            )
        })
        .collect();
    for (i, t) in tasks.iter().enumerate() {
        let done = wait_for("the task ended", DEADLINE * 2, || {
            let t = show(&g, &id_of(t));
            (t["status"] != "queued" && t["status"] != "running").then_some(t)
        });
        let log = g.ok(&["logs", &id_of(t)]);
        assert_eq!(done["status"], "completed", "{done}\n{log}");
        let tree = tree_of(&g, t);
        assert_eq!(
            std::fs::read_to_string(tree.join("f.txt")).unwrap(),
            format!("{i}\n")
        );
        assert!(!tree.join(format!("own-{}.txt", (i + 1) % 20)).exists());
    }
    let listed = worktrees(&g);
    assert_eq!(listed.len(), 21, "the workspace and 20 task worktrees");
    assert!(listed.iter().all(|w| !w.contains("locked")));
    assert_eq!(
        git(&g.ws, &["branch", "--list", "grove/*"]).lines().count(),
        20
    );
    assert_eq!(
        std::fs::read_to_string(g.ws.join("f.txt")).unwrap(),
        "one\ntwo\nthree\n"
    );
}

#[test]
fn review_of_a_running_acp_task_is_its_next_turn_in_the_same_session() {
    let mut g = Grove::scripted_acp("ask", "");
    init_repo(&mut g);
    g.serve();
    g.wait_primary();
    let t = spawn(&g, &["--worktree", "-e", "scripted", "slow 20"]);
    let id = id_of(&t);
    wait_for("a first chunk stored", DEADLINE, || {
        (!message_text(&updates(&g, &id)).is_empty()).then_some(())
    });
    g.ok(&["review", &id, "--comment", "f.txt:1", "why one?"]);
    wait_status(&g, &id, "completed");
    let u = updates(&g, &id);
    let prompts: Vec<&str> = u
        .iter()
        .filter(|(k, _)| k == "prompt")
        .filter_map(|(_, u)| u["text"].as_str())
        .collect();
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert!(
        prompts[1].contains("f.txt, line 1:\n    1 | one\nwhy one?"),
        "{prompts:?}"
    );
    assert_eq!(u.iter().filter(|(k, _)| k == "session").count(), 1);
}

/// The task's log, once it holds `what`.
fn log_with(g: &Grove, id: &str, what: &str) -> String {
    wait_for(what, DEADLINE, || {
        let log = g.ok(&["logs", id]);
        log.contains(what).then_some(log)
    })
}

#[test]
fn a_worktree_moved_off_its_branch_keeps_its_work_through_diff_delete_and_relaunch() {
    let g = repo("");
    // The agent leaves its branch: a commit on a detached HEAD, then a
    // file it never commits.
    let t = spawn(
        &g,
        &[
            "--worktree",
            "git switch -q --detach && echo c > c.txt && git add c.txt && git commit -q -m c && echo precious > work.txt",
        ],
    );
    let id = id_of(&t);
    wait_status(&g, &id, "completed");
    let tree = tree_of(&g, &t);
    fails_saying(&g, &["diff", &id], "detached HEAD");
    fails_saying(&g, &["merge", &id], "not on its branch");
    let out = g.run(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let refused = stderr_of(&out);
    assert!(refused.contains("uncommitted changes"), "{refused}");
    assert!(
        refused.contains("1 commit(s) only on the worktree's own HEAD"),
        "{refused}"
    );

    // A rerun in it fails, saying why, and deletes nothing.
    g.ok(&["relaunch", &id]);
    let done = wait_status(&g, &id, "failed");
    assert_eq!(done["failure_reason"], "spawn_error", "{done}");
    let log = log_with(&g, &id, "is not on its branch");
    assert!(log.contains("detached HEAD"), "{log}");
    assert_eq!(
        std::fs::read_to_string(tree.join("work.txt")).unwrap(),
        "precious\n"
    );
    assert!(tree.join("c.txt").exists());
}

#[test]
fn a_moved_repository_keeps_the_worktree_refuses_delete_and_is_repaired_by_a_rerun() {
    let mut g = repo("");
    let t = spawn(&g, &["--worktree", "echo run >> runs.txt; exit 0"]);
    let id = id_of(&t);
    wait_status(&g, &id, "completed");
    for m in &mut g.members {
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
    g.members.clear();
    let moved = g.dir.path().join("moved");
    std::fs::rename(&g.ws, &moved).unwrap();
    g.ws = moved;
    g.serve();
    g.wait_primary();
    let tree = tree_of(&g, &t);
    std::fs::write(tree.join("precious.txt"), "precious\n").unwrap();

    // git lists the worktree at its old place and cannot open it here.
    let out = g.run(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("cannot check") && stderr_of(&out).contains("--force"),
        "{}",
        stderr_of(&out)
    );
    assert!(tree.join("precious.txt").exists());
    let out = g.run(&["diff", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));

    // A rerun repairs it and runs in it, the uncommitted work still there.
    g.ok(&["relaunch", &id]);
    wait_for("the rerun in the repaired worktree", DEADLINE, || {
        let text = std::fs::read_to_string(tree.join("runs.txt")).ok()?;
        (text == "run\nrun\n").then_some(())
    });
    wait_status(&g, &id, "completed");
    log_with(&g, &id, "repaired worktree");
    assert_eq!(
        std::fs::read_to_string(tree.join("precious.txt")).unwrap(),
        "precious\n"
    );
    fails_saying(&g, &["delete", &id], "never merged");
}

#[test]
fn setup_copy_never_writes_through_a_symlink() {
    let g = repo("[setup]\ncopy = [\".env\", \"conf/app.env\"]\n");
    let outside = g.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim.txt");
    std::fs::write(&victim, "victim\n").unwrap();
    std::fs::write(g.ws.join(".env"), "SECRET=42\n").unwrap();
    // A branch that commits `.env` as a symlink out of the worktree.
    git(&g.ws, &["switch", "-q", "-c", "pr"]);
    std::os::unix::fs::symlink(&victim, g.ws.join(".env.link")).unwrap();
    std::fs::rename(g.ws.join(".env"), g.ws.join(".env.real")).unwrap();
    std::fs::rename(g.ws.join(".env.link"), g.ws.join(".env")).unwrap();
    git(&g.ws, &["add", "-f", ".env"]);
    git(&g.ws, &["commit", "-q", "-m", "link"]);
    git(&g.ws, &["switch", "-q", "main"]);
    std::fs::rename(g.ws.join(".env.real"), g.ws.join(".env")).unwrap();
    assert_eq!(
        std::fs::read_to_string(g.ws.join(".env")).unwrap(),
        "SECRET=42\n"
    );
    let t = spawn(&g, &["--worktree", "--base", "pr", "touch agent-ran"]);
    let done = wait_status(&g, &id_of(&t), "failed");
    assert_eq!(done["failure_reason"], "spawn_error", "{done}");
    let log = log_with(&g, &id_of(&t), "grove: setup: not copying .env:");
    assert!(log.contains("is a symlink"), "{log}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
    assert!(!tree_of(&g, &t).join("agent-ran").exists());

    // A directory on the way that is a symlink out of the worktree.
    std::fs::create_dir_all(g.ws.join("conf")).unwrap();
    std::fs::write(g.ws.join("conf/app.env"), "APP=1\n").unwrap();
    git(&g.ws, &["switch", "-q", "-c", "pr2"]);
    std::fs::rename(g.ws.join("conf"), g.ws.join("conf.real")).unwrap();
    std::os::unix::fs::symlink(&outside, g.ws.join("conf")).unwrap();
    git(&g.ws, &["add", "conf"]);
    git(&g.ws, &["commit", "-q", "-m", "dir link"]);
    git(&g.ws, &["switch", "-q", "main"]);
    std::fs::remove_file(g.ws.join("conf")).ok();
    std::fs::rename(g.ws.join("conf.real"), g.ws.join("conf")).unwrap();
    std::fs::remove_file(g.ws.join(".env")).unwrap();
    let t = spawn(&g, &["--worktree", "--base", "pr2", "touch agent-ran"]);
    let done = wait_status(&g, &id_of(&t), "failed");
    assert_eq!(done["failure_reason"], "spawn_error", "{done}");
    let log = log_with(&g, &id_of(&t), "grove: setup: not copying conf/app.env:");
    assert!(log.contains("is a symlink"), "{log}");
    assert!(!outside.join("app.env").exists());
}

#[test]
fn setup_copy_never_truncates_the_file_it_copies() {
    let g = repo("[setup]\ncopy = [\"app.conf\"]\n");
    let shared = g.dir.path().join("shared.conf");
    std::fs::write(&shared, "shared settings\n").unwrap();
    std::os::unix::fs::symlink(&shared, g.ws.join("app.conf")).unwrap();
    git(&g.ws, &["add", "app.conf"]);
    git(&g.ws, &["commit", "-q", "-m", "tracked link"]);
    let t = spawn(&g, &["--worktree", "touch agent-ran"]);
    let done = wait_status(&g, &id_of(&t), "failed");
    assert_eq!(done["failure_reason"], "spawn_error", "{done}");
    let log = log_with(&g, &id_of(&t), "grove: setup: not copying app.conf:");
    assert!(log.contains("is a symlink"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&shared).unwrap(),
        "shared settings\n"
    );
}

/// Whether `pid` (read from `file`) is a live process: not gone, not a
/// zombie.
fn alive_from(file: &Path) -> bool {
    let pid = std::fs::read_to_string(file).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    stat.is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
}

/// `script` as the repository's `post-checkout` hook, which `git worktree
/// add` runs.
fn post_checkout_hook(g: &Grove, script: &str) {
    let hooks = g.dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("post-checkout");
    std::fs::write(&hook, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    git(
        &g.ws,
        &["config", "core.hooksPath", hooks.to_str().unwrap()],
    );
}

/// A hook of the repository's that never returns (here `post-checkout`,
/// which `git worktree add` runs) and a setup command that never returns:
/// the task's timeout and a cancel end them, kill what they started, and
/// leave the next worktree task free to run.
#[test]
fn a_hanging_git_hook_or_setup_ends_at_the_timeout_or_a_cancel() {
    let g = repo("");
    let hook_pid = g.dir.path().join("hook.pid");
    post_checkout_hook(
        &g,
        &format!("sleep 300 &\necho $! > '{}'\nwait", hook_pid.display()),
    );

    let t = spawn(&g, &["--worktree", "--timeout", "1", "true"]);
    let done = wait_status(&g, &id_of(&t), "failed");
    assert_eq!(done["failure_reason"], "timeout", "{done}");
    let log = log_with(&g, &id_of(&t), "while making the worktree");
    assert!(log.contains("the agent was not started"), "{log}");
    wait_for("the hook's process killed", DEADLINE, || {
        (!alive_from(&hook_pid)).then_some(())
    });

    std::fs::remove_file(&hook_pid).unwrap();
    let t = spawn(&g, &["--worktree", "true"]);
    wait_for("the hook running", DEADLINE, || {
        hook_pid.exists().then_some(())
    });
    g.ok(&["cancel", &id_of(&t)]);
    wait_status(&g, &id_of(&t), "cancelled");
    log_with(&g, &id_of(&t), "cancelled while making the worktree");
    wait_for("the hook's process killed", DEADLINE, || {
        (!alive_from(&hook_pid)).then_some(())
    });

    // Without the hook, worktree tasks run again: nothing held the lock.
    git(&g.ws, &["config", "--unset", "core.hooksPath"]);
    let setup_pid = g.dir.path().join("setup.pid");
    std::fs::write(
        g.ws.join(".grove/grove.toml"),
        format!(
            "heartbeat_ms = 100\n[setup]\nrun = \"sleep 300 & echo $! > '{}'; wait\"\n",
            setup_pid.display()
        ),
    )
    .unwrap();
    let t = spawn(&g, &["--worktree", "--timeout", "1", "touch agent-ran"]);
    let done = wait_status(&g, &id_of(&t), "failed");
    assert_eq!(done["failure_reason"], "timeout", "{done}");
    log_with(&g, &id_of(&t), "while running the setup command");
    assert!(!tree_of(&g, &t).join("agent-ran").exists());
    wait_for("the setup's process killed", DEADLINE, || {
        (!alive_from(&setup_pid)).then_some(())
    });
}

/// A hook that leaves a process in the background (a file watcher, `&`)
/// neither holds the worktree's making up (git's output is not read from
/// a pipe the process keeps open) nor outlives the task.
#[test]
fn a_hooks_background_process_neither_stalls_the_worktree_nor_outlives_the_task() {
    let g = repo("");
    let bg_pid = g.dir.path().join("bg.pid");
    post_checkout_hook(
        &g,
        &format!("(sleep 300 & echo $! > '{}') &\nexit 0", bg_pid.display()),
    );
    let t = spawn(&g, &["--worktree", "echo ran > ran.txt"]);
    wait_status(&g, &id_of(&t), "completed");
    assert!(tree_of(&g, &t).join("ran.txt").exists());
    wait_for("the hook's background process killed", DEADLINE, || {
        (!alive_from(&bg_pid)).then_some(())
    });
}

/// A diff driver of the repository's (an external diff command, or a text
/// conversion) could show a task's change as anything, or as nothing:
/// `grove diff` shows git's own patch.
#[test]
fn a_repositorys_diff_driver_cannot_hide_a_change_from_review() {
    let g = repo("");
    git(&g.ws, &["config", "diff.hide.command", "true"]);
    git(
        &g.ws,
        &["config", "diff.conv.textconv", "sh -c 'echo CONVERTED'"],
    );
    let t = spawn(
        &g,
        &[
            "--worktree",
            "printf 'hidden change\\n' > s.txt && printf 'converted change\\n' > c.txt \\
             && printf 's.txt diff=hide\\nc.txt diff=conv\\n' > .gitattributes",
        ],
    );
    wait_status(&g, &id_of(&t), "completed");
    let diff = g.ok(&["diff", &id_of(&t)]);
    assert!(
        diff.contains("+hidden change") && diff.contains("+converted change"),
        "{diff}"
    );
    assert!(!diff.contains("CONVERTED"), "{diff}");
}

/// A task that ran `git init` in a directory of its worktree: its branch
/// would hold only a pointer to a commit inside the worktree. The merge
/// refuses, saying so and changing nothing (nor can a purge then take the
/// files); with the inner `.git` removed as advised, the files merge.
#[test]
fn a_directory_the_task_made_a_repository_of_its_own_is_not_merged_as_a_pointer() {
    let g = repo("");
    let script = "mkdir proj && cd proj && git init -q && echo important > f \
                  && git add f && git commit -qm inner && echo more > g";
    let t = spawn(&g, &["--worktree", "--wait", script]);
    let id = id_of(&t);
    assert_eq!(t["status"], "completed", "{t}");
    let main_before = git(&g.ws, &["rev-parse", "main"]);
    let err = fails_saying(&g, &["merge", &id], "a git repository of its own");
    assert!(err.contains("proj"), "{err}");
    assert_eq!(
        git(&g.ws, &["rev-parse", "main"]),
        main_before,
        "main moved"
    );
    assert!(!g.ws.join("proj").exists());
    fails_saying(&g, &["purge", &id], "HEAD does not contain");
    // As the refusal says.
    assert!(err.contains("git rm -q --cached proj"), "{err}");
    std::fs::remove_dir_all(tree_of(&g, &t).join("proj/.git")).unwrap();
    git(&tree_of(&g, &t), &["rm", "-q", "--cached", "proj"]);
    g.ok(&["merge", &id]);
    let read = |p: &str| std::fs::read_to_string(g.ws.join(p)).unwrap();
    assert_eq!(read("proj/f"), "important\n");
    assert_eq!(read("proj/g"), "more\n");
    assert_clean(&g);
}

/// Ctrl-C in the terminal of `grove merge` while git writes the merge into
/// the checkout (a slow smudge filter holds `read-tree` there): the move is
/// out of Ctrl-C's reach, so it is whole or not at all — never files
/// rewritten under an old index, with "nothing was changed" said.
#[test]
fn ctrl_c_during_the_move_never_leaves_a_half_moved_checkout() {
    let g = repo("");
    let dir = g.dir.path().to_path_buf();
    let (slow, reading) = (dir.join("slow"), dir.join("reading"));
    let smudge = format!(
        "sh -c 'if [ -e {} ]; then touch {}; sleep 0.4; fi; cat'",
        slow.display(),
        reading.display()
    );
    git(&g.ws, &["config", "filter.slow.smudge", &smudge]);
    git(&g.ws, &["config", "filter.slow.clean", "cat"]);
    std::fs::write(g.ws.join(".gitattributes"), "*.md filter=slow\n").unwrap();
    for n in 0..5 {
        std::fs::write(g.ws.join(format!("{n}.md")), "before\n").unwrap();
    }
    git(&g.ws, &["add", "-A"]);
    git(&g.ws, &["commit", "-qm", "files"]);
    let script = "for n in 0 1 2 3 4; do echo after > $n.md; done";
    let t = spawn(&g, &["--worktree", "--wait", script]);
    let id = id_of(&t);
    let before = git(&g.ws, &["rev-parse", "main"]);
    std::fs::write(&slow, "").unwrap();
    let mut merge = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(common::BIN);
        cmd.args(["merge", &id, "--workspace"]).arg(&g.ws);
        cmd.envs(IDENTITY).env("GIT_CONFIG_GLOBAL", "/dev/null");
        // Its own group, as a terminal's foreground job is.
        cmd.process_group(0);
        cmd.spawn().unwrap()
    };
    wait_for("git to write the merge", DEADLINE, || {
        reading.exists().then_some(())
    });
    unsafe { libc::killpg(merge.id() as i32, libc::SIGINT) };
    let status = merge.wait().unwrap();
    let after = git(&g.ws, &["rev-parse", "main"]);
    // Whole or not at all, and the checkout matches its branch either way.
    assert_clean(&g);
    let files: Vec<String> = (0..5)
        .map(|n| std::fs::read_to_string(g.ws.join(format!("{n}.md"))).unwrap())
        .collect();
    if after == before {
        assert!(
            files.iter().all(|f| f == "before\n"),
            "{files:?} ({status})"
        );
    } else {
        assert!(files.iter().all(|f| f == "after\n"), "{files:?} ({status})");
    }
}

/// Every file under `.git/objects` (loose objects and packs).
fn object_files(g: &Grove) -> usize {
    let mut todo = vec![g.ws.join(".git/objects")];
    let mut n = 0;
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// `grove diff` only reads: the blobs it takes of the worktree's new and
/// changed files stay out of the repository (each look wrote a copy of
/// every such file into `.git/objects` before).
#[test]
fn diff_writes_nothing_into_the_repository() {
    let g = repo("");
    let t = spawn(
        &g,
        &[
            "--worktree",
            "head -c 200000 /dev/urandom > big.bin; echo four >> f.txt",
        ],
    );
    wait_status(&g, &id_of(&t), "completed");
    let before = object_files(&g);
    let stat = g.ok(&["diff", &id_of(&t), "--stat"]);
    assert!(stat.contains("big.bin") && stat.contains("f.txt"), "{stat}");
    let patch = g.ok(&["diff", &id_of(&t)]);
    assert!(patch.contains("+four"), "{patch}");
    assert_eq!(object_files(&g), before, "grove diff wrote objects");
}

/// A task merged with `--squash` holds nothing unmerged: its commits are
/// not in main, its changes are. `delete` used to refuse it as "never
/// merged" and advise a second merge; work that is not in main still
/// counts, and telling writes nothing into the repository.
#[test]
fn a_squash_merged_task_deletes_without_force() {
    let g = repo("");
    let script = "echo a > a.txt && git add a.txt && git commit -qm a && echo b > b.txt && git add b.txt && git commit -qm b";
    let t = spawn(&g, &["--worktree", script]);
    let id = id_of(&t);
    wait_status(&g, &id, "completed");
    g.ok(&["merge", "--squash", &id]);
    g.ok(&["delete", &id]);
    assert!(!tree_of(&g, &t).exists());
    assert!(!branch_exists(&g, &branch_of(&t)));

    // Squash-merged, then more work on the branch: that still counts.
    let t = spawn(
        &g,
        &[
            "--worktree",
            "echo c > c.txt && git add c.txt && git commit -qm c",
        ],
    );
    let id = id_of(&t);
    wait_status(&g, &id, "completed");
    g.ok(&["merge", "--squash", &id]);
    let tree = tree_of(&g, &t);
    std::fs::write(tree.join("d.txt"), "d\n").unwrap();
    git(&tree, &["add", "d.txt"]);
    git(&tree, &["commit", "-q", "-m", "d"]);
    // The check merges the branch into HEAD to see what would change: the
    // trees that takes stay out of the repository.
    let before = object_files(&g);
    fails_saying(&g, &["delete", &id], "never merged");
    assert_eq!(object_files(&g), before, "the squash check wrote objects");
}

/// A branch named `grove` leaves no room for the task branches
/// (`grove/<id>`): refused at spawn, saying why, not failed at each start.
#[test]
fn a_branch_named_grove_is_refused_at_spawn() {
    let g = repo("");
    git(&g.ws, &["branch", "grove"]);
    let out = g.run(&["spawn", "--worktree", "echo hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("branch named `grove`"),
        "{}",
        stderr_of(&out)
    );
    assert!(g.ok(&["list", "--json"]).trim() == "[]");
}
