//! The curl examples of README.md's "Server API" section run as written against a real
//! server, so the documentation cannot drift from the API. Every `curl` must get a 2xx.

mod util;

use std::process::Command;

use util::*;

fn server_api_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Server API").nth(1).expect("a Server API section");
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + 6..];
        let end = body.find("```").expect("closed block");
        blocks.push(body[..end].to_string());
        rest = &body[end..][3..];
    }
    blocks
}

#[test]
fn the_readme_server_api_examples_work_as_written() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is needed to check README.md's examples");
    }
    let server = Server::start(&[]);
    let blocks = server_api_blocks();
    assert!(blocks.len() >= 8, "found {} blocks", blocks.len());
    let mut ran = 0;
    for block in &blocks {
        // The first block starts a server and sets the key; the test's server stands in.
        let script: String = block
            .lines()
            .filter(|line| {
                !line.starts_with("switchboard ") && !line.starts_with("export ") && !line.starts_with("API=")
            })
            .collect::<Vec<_>>()
            .join("\n");
        if !script.contains("curl") {
            continue;
        }
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -euo pipefail\ncurl() {{ command curl --fail-with-body --max-time 10 \"$@\"; echo; }}\n{script}"
            ))
            .env("SWITCHBOARD_API_KEY", API_KEY)
            .env("API", format!("http://{}", server.api))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "README example failed:\n{script}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        ran += script.matches("curl ").count();
    }
    assert!(ran >= 14, "ran {ran} curl commands");
}
