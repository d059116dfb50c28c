//! Issue 20 item 10: on a terminal, `kmsfs rewrap` draws a progress bar that
//! counts bytes in binary units, shows an integer rate and an ETA, and
//! redraws on one line of an 80-column terminal. Run under script(1), so the
//! real binary writes to a real pseudo-terminal.

mod common;

use std::path::Path;

use common::Ks;

/// The frames of the bar in a typescript: what lies between carriage
/// returns and line erasures, where it shows an ETA.
fn frames(raw: &str) -> Vec<String> {
    raw.split(['\r', '\n'])
        .flat_map(|s| s.split("\x1b[2K"))
        .filter(|f| f.contains("ETA"))
        .map(str::to_string)
        .collect()
}

/// Checks one frame: `BAR DONE UNIT/TOTAL UNIT  RATE UNIT/s  ETA HH:MM:SS`
/// in at most 80 columns.
fn check_frame(f: &str) {
    assert!(f.chars().count() <= 80, "wider than 80 columns: {f:?}");
    let parts: Vec<&str> = f.trim_end().split("  ").collect();
    assert_eq!(parts.len(), 3, "{f:?}");
    let units = ["B", "KiB", "MiB", "GiB"];
    let (bar_bytes, rate, eta) = (parts[0], parts[1], parts[2]);
    let mut words = bar_bytes.split(' ').skip(1);
    let (done, middle, total_unit) = (words.next(), words.next(), words.next());
    assert!(done.is_some_and(|d| d.parse::<f64>().is_ok()), "{f:?}");
    let (unit, total) = middle.and_then(|m| m.split_once('/')).expect(f);
    assert!(units.contains(&unit), "{f:?}");
    assert!(total.parse::<f64>().is_ok(), "{f:?}");
    assert!(total_unit.is_some_and(|u| units.contains(&u)), "{f:?}");
    let (n, per) = rate.split_once(' ').expect(f);
    assert!(
        n.parse::<u64>().is_ok(),
        "the rate is not an integer: {f:?}"
    );
    assert!(
        per.strip_suffix("/s").is_some_and(|u| units.contains(&u)),
        "{f:?}"
    );
    let hms = eta.strip_prefix("ETA ").expect(f);
    assert!(
        hms.len() == 8 && hms.split(':').all(|x| x.parse::<u8>().is_ok()),
        "{f:?}"
    );
}

#[test]
fn rewrap_on_a_terminal_shows_bytes_an_integer_rate_and_an_eta_on_one_line() {
    let Some(script) = common::require_tool("progress", "script") else {
        return;
    };
    let ks = Ks::new();
    let src = ks.file("plain");
    std::fs::create_dir(&src).unwrap();
    let mut rng = common::Rng::new(20);
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}")), rng.bytes(1 << 20)).unwrap();
    }
    let backing = ks.file("backing");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    ks.ok(&["import", &p(&src), &p(&backing)]);
    let key = ks.create_key();
    let typescript = ks.file("typescript");
    let cmd = format!(
        "stty cols 80 rows 24; exec {} --keystore {} rewrap {} --to-key-id {key}",
        common::BIN,
        p(&ks.path),
        p(&backing)
    );
    let o = common::command(script)
        .env("RUST_LOG", "warn")
        .env_remove("XDG_DATA_HOME")
        .args(["-qec", &cmd])
        .arg(&typescript)
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(o.status.success(), "{}\n{raw}", common::describe(&o));
    assert!(raw.contains("rewrap: 40 files, 40 rewrapped"), "{raw}");
    let frames = frames(&raw);
    assert!(!frames.is_empty(), "no progress bar drawn: {raw:?}");
    for f in &frames {
        check_frame(f);
    }
    // Bytes, not files: the total is the backing files' 40 MiB and a little.
    assert!(
        frames[0].contains("/40.") && frames[0].contains(" MiB  "),
        "{:?}",
        frames[0]
    );
}
