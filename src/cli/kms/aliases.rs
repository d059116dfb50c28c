//! The alias commands: create, update, delete and list `alias/NAME`.

use serde_json::json;

use super::Session;
use super::args::{AliasArgs, DeleteAliasArgs, ListAliasesArgs};
use crate::cli::CliError;
use crate::cli::output::print_json;

/// `create-alias`.
pub(super) fn create_alias(s: &Session, a: AliasArgs) -> Result<(), CliError> {
    Ok(s.ks.create_alias(&s.caller, &a.alias_name, &a.target_key_id)?)
}

/// `update-alias`.
pub(super) fn update_alias(s: &Session, a: AliasArgs) -> Result<(), CliError> {
    Ok(s.ks.update_alias(&s.caller, &a.alias_name, &a.target_key_id)?)
}

/// `delete-alias`.
pub(super) fn delete_alias(s: &Session, a: DeleteAliasArgs) -> Result<(), CliError> {
    Ok(s.ks.delete_alias(&s.caller, &a.alias_name)?)
}

/// `list-aliases`.
pub(super) fn list_aliases(s: &Session, a: ListAliasesArgs) -> Result<(), CliError> {
    let (list, next) = super::page(&s.ks.list_aliases(&s.caller, a.key_id.as_deref())?, &a.page)?;
    if s.json {
        let mut v = json!({ "Aliases": list, "Truncated": next.is_some() });
        if let Some(m) = next {
            v["NextMarker"] = json!(m);
        }
        print_json(&v);
        return Ok(());
    }
    println!("{:<40}  TARGET KEY ID", "ALIAS NAME");
    for a in list {
        println!("{:<40}  {}", a.alias_name, a.target_key_id);
    }
    Ok(())
}
