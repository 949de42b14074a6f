//! The dashboard's TypeScript types (`ui/src/types.ts`), generated from the Rust types the
//! tray app sends and receives, so that the two cannot drift: the test `types` fails when the
//! file differs from what [`typescript`] writes, and rewrites it when asked.

use crate::command::{FoundView, PresetView};
use crate::error::{UiCode, UiError};
use crate::view::{
    ActivityView, BringingBack, Dashboard, FolderForm, FolderMode, FolderView, GuardView, Level,
    MassDeleteView, Overall, PauseView, PausedBy, PushAction, PushView, ResourcesView, ServerRole,
    ServerView,
};
use rainmaker_engine::app::progress::Progress;
use rainmaker_engine::protocol::{
    FeedStatus, FolderRole, JobState, SubscriptionStatus, TrashBatch,
};
use rainmaker_engine::status::TargetState;
use ts_rs::TS;

/// Where the generated file lives, from the tray app's folder.
pub const TYPES_FILE: &str = "../ui/src/types.ts";

/// The whole of `ui/src/types.ts`.
pub fn typescript() -> String {
    let mut out = String::from(
        "// The dashboard's data, generated from the tray app's Rust types (src-tauri/src/bindings.rs).\n\
         // Do not edit: `RAINMAKER_WRITE_TYPES=1 cargo test -p rainmaker-tray --test types` rewrites it.\n",
    );
    let decls = [
        declaration::<Dashboard>(),
        declaration::<BringingBack>(),
        declaration::<Overall>(),
        declaration::<ServerView>(),
        declaration::<ServerRole>(),
        declaration::<TargetState>(),
        declaration::<FolderRole>(),
        declaration::<PushView>(),
        declaration::<FeedStatus>(),
        declaration::<SubscriptionStatus>(),
        declaration::<TrashBatch>(),
        declaration::<JobState>(),
        declaration::<PushAction>(),
        declaration::<Progress>(),
        declaration::<FolderView>(),
        declaration::<MassDeleteView>(),
        declaration::<FolderForm>(),
        declaration::<FolderMode>(),
        declaration::<GuardView>(),
        declaration::<ResourcesView>(),
        declaration::<PauseView>(),
        declaration::<PausedBy>(),
        declaration::<ActivityView>(),
        declaration::<Level>(),
        declaration::<PresetView>(),
        declaration::<FoundView>(),
        declaration::<UiCode>(),
        declaration::<UiError>(),
    ];
    for decl in decls {
        out.push('\n');
        out.push_str(&decl);
        out.push('\n');
    }
    out
}

fn declaration<T: TS>() -> String {
    format!("{}export {}", T::docs().unwrap_or_default(), T::decl())
}
