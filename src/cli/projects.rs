//! `grove projects`: the workspaces this user runs grove in (see
//! `projects.rs` at the crate root for the registry itself).

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Lists the registry, or removes one entry. Needs no workspace.
pub fn run(forget: Option<&str>, json: bool) -> i32 {
    if let Some(id) = forget {
        return match crate::projects::forget(id) {
            Ok(true) => {
                if json {
                    crate::output::print_json(&serde_json::json!({ "forgotten": id }));
                }
                EXIT_OK
            }
            Ok(false) => {
                errln!("grove: no project {id} (see `grove projects` for the ids)");
                EXIT_FAILED
            }
            Err(e) => {
                errln!("grove: {e}");
                EXIT_USAGE
            }
        };
    }
    let listed = match crate::projects::list() {
        Ok(l) => l,
        Err(e) => {
            errln!("grove: {e}");
            return EXIT_USAGE;
        }
    };
    if json {
        crate::output::print_json(&listed);
        return EXIT_OK;
    }
    for p in &listed {
        let state = match (p.stale, p.running) {
            (true, _) => "stale (path gone)",
            (false, true) => "running",
            (false, false) => "stopped",
        };
        outln!(
            "{}  {:<20} {:<18} {}",
            p.project.id,
            p.project.name,
            state,
            p.project.path.display()
        );
    }
    EXIT_OK
}
