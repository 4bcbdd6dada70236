//! fleet.toml is refused, with file, line and field, when it is wrong.

use std::path::Path;

use armfleet_server::domain::config::Fleet;

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINshuiiHSBrO3Cv3at18VJGCWY8v2Y4DCSjDp7PxSnhU a";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3SXM6axZ4/Gucd4kmFjr5dx2Qa0JRQ4bMKsHpe9diY b";

fn board(name: &str, family: &str, key: &str) -> String {
    format!(
        "[[board]]\nname = \"{name}\"\nfamily = \"{family}\"\nlabels = [\"kvm\"]\nkey = \"{key}\"\n\n"
    )
}

fn refused(text: &str) -> String {
    match Fleet::parse(Path::new("lab/fleet.toml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_root_example_fleet_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet.toml");
    let fleet = Fleet::load(&path).expect("root fleet.toml loads");
    assert_eq!(fleet.boards.len(), 4);
    let families: Vec<_> = fleet.boards.iter().map(|b| b.family.as_str()).collect();
    assert_eq!(
        families,
        ["kunpeng920", "ampere-altra", "rpi4", "virt-arm64"]
    );
    assert_eq!(fleet.plans[0].boards.len(), 3);
    // The virtual board has a plan of its own.
    assert_eq!(fleet.plans[1].boards.len(), 1);
}

#[test]
fn an_unknown_family_names_file_line_and_value() {
    let text = format!(
        "{}{}",
        board("a", "kunpeng920", KEY_A),
        board("b", "sparc64", KEY_B)
    );
    let e = refused(&text);
    assert!(
        e.starts_with("lab/fleet.toml: line 9") && e.contains("family"),
        "{e}"
    );
    assert!(
        e.contains("sparc64") && e.contains("kunpeng920"),
        "lists the known families: {e}"
    );
}

#[test]
fn a_duplicate_board_is_refused_with_both_lines() {
    let text = format!("{}{}", board("a", "rpi4", KEY_A), board("a", "rpi5", KEY_B));
    let e = refused(&text);
    assert!(
        e.contains("line 8")
            && e.contains("board.name")
            && e.contains("duplicate board `a`")
            && e.contains("line 2"),
        "{e}"
    );
}

#[test]
fn a_key_used_by_two_boards_is_refused() {
    let text = format!("{}{}", board("a", "rpi4", KEY_A), board("b", "rpi5", KEY_A));
    let e = refused(&text);
    assert!(
        e.contains("board.key") && e.contains("duplicate key") && e.contains("`a`"),
        "{e}"
    );
}

#[test]
fn a_plan_matching_no_board_is_refused() {
    let text = format!(
        "{}[[plan]]\nname = \"p\"\ntype = \"migrate-cancel\"\nlabels = [\"gpu\"]\n",
        board("a", "rpi4", KEY_A)
    );
    let e = refused(&text);
    assert!(
        e.contains("line 8") && e.contains("plan.boards") && e.contains("matches no board"),
        "{e}"
    );
}

#[test]
fn syntax_errors_and_unknown_fields_are_located() {
    let e = refused("[[board]]\nname = \"a\"\nfamily = rpi4\n");
    assert!(e.contains("line 3"), "{e}");
    let e = refused(&format!(
        "{}\ncolour = \"blue\"\n",
        board("a", "rpi4", KEY_A).trim_end()
    ));
    assert!(e.contains("line 6") && e.contains("colour"), "{e}");
}

#[test]
fn a_broken_key_is_refused() {
    let e = refused(&board("a", "rpi4", "ssh-ed25519 AAAAnotbase64"));
    assert!(
        e.contains("board.key") && e.contains("not an OpenSSH public key"),
        "{e}"
    );
}

#[test]
fn the_server_binary_refuses_a_malformed_fleet_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, board("a", "vax", KEY_A)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_armfleet"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--ssh",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("line 3") && err.contains("vax"),
        "{err}"
    );
}

#[test]
fn report_trailers_are_checked_and_default_to_the_public_url() {
    let base = board("b1", "kunpeng920", KEY_A)
        + "[[plan]]\nname = \"p\"\ntype = \"migrate-cancel\"\nlabels = [\"kvm\"]\n";
    let e = refused(&format!(
        "{base}[report]\nreported_by = \"lab@example.org\"\n"
    ));
    assert!(
        e.contains("[report] reported_by") && e.contains("Name <user@host>"),
        "{e}"
    );
    let e = refused(&format!(
        "{base}[report]\nlink = \"armfleet.example.org\"\n"
    ));
    assert!(e.contains("[report] link"), "{e}");
    let f = Fleet::parse(
        Path::new("lab/fleet.toml"),
        &format!(
            "[server]\npublic_url = \"https://lab.example.org/\"\n{base}[report]\nreported_by = \"Lab Bot <bot@example.org>\"\n"
        ),
    )
    .unwrap();
    assert_eq!(
        f.report.reported_by.as_deref(),
        Some("Lab Bot <bot@example.org>")
    );
    assert_eq!(f.report.link.as_deref(), Some("https://lab.example.org"));
    let f = Fleet::parse(Path::new("lab/fleet.toml"), &base).unwrap();
    assert_eq!(f.report, Default::default(), "no trailer is invented");
}
