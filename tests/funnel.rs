//! The funnel through the real binary and server: text, JSON, CSV, an SVG chart that renders
//! to PNG, and `GET /v1/funnel`.

use std::process::Command;

use linkflow_e2e::{get_json, linkflow_bin};
use serde_json::Value;

fn linkflow(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Ingests the bundled example flows into `data_dir`.
fn ingest_examples(data_dir: &std::path::Path) {
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/linkflow-cli/flows");
    for (provider, file, extra) in [
        ("moneykit", "moneykit_flow.jsonl", vec!["--user", "user_17"]),
        ("benji", "benji_callbacks.json", vec![]),
        ("knot", "knot_webhooks.jsonl", vec![]),
    ] {
        let path = examples.join(file);
        let mut args = vec!["ingest", "--provider", provider];
        args.extend(extra);
        args.push(path.to_str().unwrap());
        assert!(linkflow(data_dir, &args).status.success());
    }
}

/// Renders SVG text to a PNG with resvg; fails on invalid SVG.
fn render_png(svg: &str) -> Vec<u8> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &options).expect("the chart is valid SVG");
    let size = tree.size().to_int_size();
    // Everything drawn, text included (laid out with the system's fonts), is on the canvas.
    let drawn = tree.root().abs_stroke_bounding_box();
    assert!(
        drawn.left() >= 0.0
            && drawn.top() >= 0.0
            && drawn.right() <= size.width() as f32 + 0.5
            && drawn.bottom() <= size.height() as f32 + 0.5,
        "drawn {drawn:?} outside the {}x{} canvas",
        size.width(),
        size.height()
    );
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    // Something other than the white background was drawn.
    assert!(pixmap.pixels().iter().any(|pixel| pixel.red() < 200));
    pixmap.encode_png().unwrap()
}

#[test]
fn the_cli_funnel_prints_text_json_csv_and_an_svg_that_renders() {
    let dir = tempfile::tempdir().unwrap();
    ingest_examples(dir.path());
    let text = linkflow(dir.path(), &["funnel"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("== all: 4 sessions, 3 succeeded, 1 exited"),
        "{text}"
    );

    let json: Value =
        serde_json::from_slice(&linkflow(dir.path(), &["funnel", "--json"]).stdout).unwrap();
    let steps = json[0]["steps"].as_array().unwrap();
    assert_eq!(steps[0]["phase"], "created");
    assert_eq!(steps[0]["reached"], 4);
    // benji_demo_2 exited from created (Benji has no open event).
    assert_eq!(steps[0]["dropped_exited"], 1);
    assert_eq!(steps[8]["phase"], "succeeded");
    assert_eq!(steps[8]["reached"], 3);

    let grouped: Value = serde_json::from_slice(
        &linkflow(dir.path(), &["funnel", "--by", "provider", "--json"]).stdout,
    )
    .unwrap();
    let groups: Vec<&str> = grouped
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["benji", "knot", "moneykit"]);
    let knot: Value = serde_json::from_slice(
        &linkflow(dir.path(), &["funnel", "--provider", "knot", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(knot[0]["sessions"], 1);
    let none: Value = serde_json::from_slice(
        &linkflow(
            dir.path(),
            &["funnel", "--since", "2030-01-01T00:00:00Z", "--json"],
        )
        .stdout,
    )
    .unwrap();
    assert!(none.as_array().unwrap().is_empty());

    let csv =
        String::from_utf8_lossy(&linkflow(dir.path(), &["funnel", "--csv"]).stdout).to_string();
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("group,phase,reached,conversion"));
    assert_eq!(lines.count(), 9);

    let svg_path = dir.path().join("funnel.svg");
    assert!(
        linkflow(dir.path(), &["funnel", "--svg", svg_path.to_str().unwrap()])
            .status
            .success()
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let png = render_png(&svg);
    assert!(png.starts_with(b"\x89PNG"));
    // `LINKFLOW_BLESS=1` refreshes the example image in the README.
    if std::env::var_os("LINKFLOW_BLESS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::write(docs.join("funnel-example.png"), &png).unwrap();
    }
    let grouped_svg = dir.path().join("by.svg");
    assert!(linkflow(
        dir.path(),
        &[
            "funnel",
            "--by",
            "provider",
            "--svg",
            grouped_svg.to_str().unwrap()
        ]
    )
    .status
    .success());
    assert!(dir.path().join("by-knot.svg").exists());
}

#[test]
fn sessions_abandoned_flag_and_show_field_follow_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    ingest_examples(dir.path());
    // The example events are from 2023-2024: with any timeout, non-terminal ones are abandoned.
    let abandoned: Value = serde_json::from_slice(
        &linkflow(dir.path(), &["sessions", "--abandoned", "--json"]).stdout,
    )
    .unwrap();
    assert!(
        abandoned["sessions"].as_array().unwrap().is_empty(),
        "every example session is terminal"
    );
    let input = dir.path().join("open.json");
    std::fs::write(&input, r#"{"name":"open","properties":{},"meta":{"link_session_id":"quiet","timestamp":"2024-01-01T00:00:00Z"}}"#).unwrap();
    assert!(linkflow(
        dir.path(),
        &["ingest", "--provider", "moneykit", input.to_str().unwrap()]
    )
    .status
    .success());
    let abandoned: Value = serde_json::from_slice(
        &linkflow(dir.path(), &["sessions", "--abandoned", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(abandoned["sessions"][0]["session_id"], "quiet");
    let show: Value =
        serde_json::from_slice(&linkflow(dir.path(), &["show", "quiet", "--json"]).stdout).unwrap();
    assert_eq!(show["abandoned"], true);
}

#[tokio::test]
async fn the_http_funnel_takes_the_same_filters() {
    let dir = tempfile::tempdir().unwrap();
    ingest_examples(dir.path());
    let server = linkflow_e2e::Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let funnels: Value = get_json(&client, &server.url("/v1/funnel?by=provider")).await;
    assert_eq!(funnels.as_array().unwrap().len(), 3);
    let knot: Value = get_json(
        &client,
        &server.url("/v1/funnel?provider=knot&institution=10"),
    )
    .await;
    assert_eq!(knot[0]["succeeded"], 1);
    let svg = client
        .get(server.url("/v1/funnel?format=svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    render_png(&svg.text().await.unwrap());
    let bad = client
        .get(server.url("/v1/funnel?by=color"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// Issue 28's finding: the chart cut annotations off at 960 px, coloured plain medians red,
/// showed raw seconds and only step-to-step conversion. A funnel with long error codes, a long
/// group and large counts renders within its canvas, with both conversions labelled, times for
/// people, the window and filters in the title, and red used for drop-off only.
#[test]
fn the_funnel_chart_fits_its_canvas_and_says_what_it_shows() {
    use chrono::TimeZone;
    use linkflow_core::funnel::{Funnel, FunnelQuery, FunnelStep, FUNNEL_STEPS};
    let steps: Vec<FunnelStep> = FUNNEL_STEPS
        .iter()
        .enumerate()
        .map(|(n, phase)| FunnelStep {
            phase: *phase,
            reached: 1_000_000 - n as u64 * 90_000,
            conversion: (n > 0).then_some(0.9),
            dropped_exited: 45_000,
            dropped_abandoned: 45_000,
            exit_statuses: vec![("requires_credentials".into(), 40_000)],
            error_codes: vec![(
                "INSTITUTION_NOT_RESPONDING_WITH_A_VERY_LONG_ERROR_CODE_THAT_GOES_ON_AND_ON".into(),
                12_345,
            )],
            time_in_phase_p50_s: Some(200.0),
            time_in_phase_p90_s: Some(3_900.0),
        })
        .collect();
    let funnel = Funnel {
        group: "institution: ins_109508_first_platypus_bank_of_a_long_name".into(),
        sessions: 1_000_000,
        succeeded: 280_000,
        exited: 400_000,
        abandoned: 300_000,
        in_progress: 20_000,
        steps,
    };
    let mut query = FunnelQuery::at(chrono::Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap());
    query.since = Some(chrono::Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap());
    query.until = Some(chrono::Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap());
    query.provider = Some(linkflow_core::Provider::Plaid);
    let svg = linkflow::chart::funnel_svg(&funnel, &query);
    assert!(svg.contains("sessions started 2026-11-30 00:00 UTC to 2026-12-07 00:00 UTC"));
    assert!(svg.contains("provider plaid"));
    assert!(svg.contains(">overall<") && svg.contains(">step<"));
    assert!(svg.contains("median 3 min 20 s, p90 1 h 5 min"), "{svg}");
    // Red (#b91c1c) colours drop-off and nothing else.
    for piece in svg.split("fill=\"#b91c1c\">").skip(1) {
        assert!(
            piece.contains("exited<") || piece.contains("abandoned<"),
            "red used for: {}",
            &piece[..60.min(piece.len())]
        );
    }
    let png = render_png(&svg);
    if std::env::var_os("LINKFLOW_BLESS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::write(docs.join("funnel-large-example.png"), &png).unwrap();
    }
}
