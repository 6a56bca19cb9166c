//! The CUDA kernels (`kernels/*.cu`) compile with NVRTC and match their manifest.
//!
//! No GPU is needed: `tests/reference/nvrtc_compile.py` loads NVRTC from the
//! `nvidia-cuda-nvrtc-cu12` wheel of the test virtualenv and compiles every source for
//! compute_70 and compute_90 with the launcher's options. The test fails (never skips) when
//! NVRTC is missing or a kernel does not compile. It then checks the contract of
//! `kernels/manifest.json`: every listed kernel is an `.entry` of the PTX of its file, for
//! every architecture, with exactly the listed parameters (count and PTX type class), every
//! PTX entry is listed, and every `extern "C" __global__` written in the sources is listed.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The PTX parameter class of a manifest C type (pointers are 64-bit addresses).
fn ptx_class(c_type: &str) -> &'static str {
    match c_type {
        t if t.ends_with('*') => "u64",
        "u64" | "i64" => "u64",
        "int" | "u32" => "u32",
        "float" => "f32",
        "double" => "f64",
        other => panic!("manifest type {other:?} has no PTX class here: add it"),
    }
}

/// The `.entry` kernels of a PTX text and their parameter type classes, in order.
fn ptx_entries(ptx: &str) -> BTreeMap<String, Vec<String>> {
    let mut entries = BTreeMap::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(".visible .entry ") else {
            continue;
        };
        let name = rest
            .strip_suffix('(')
            .or_else(|| rest.strip_suffix("()"))
            .unwrap_or_else(|| panic!("unexpected entry line {line:?}"))
            .to_string();
        let mut params = Vec::new();
        if rest.ends_with('(') {
            for param in lines.by_ref() {
                let param = param.trim();
                if param.starts_with(')') {
                    break;
                }
                let class = param
                    .strip_prefix(".param .")
                    .and_then(|p| p.split_whitespace().next())
                    .unwrap_or_else(|| panic!("unexpected parameter line {param:?} of {name}"));
                params.push(class.to_string());
            }
        }
        entries.insert(name, params);
    }
    entries
}

/// The names written as `extern "C" __global__ void NAME(` in a source (macro-generated
/// entry points, whose names contain `##`, are covered by the PTX check instead).
fn written_kernels(source: &str) -> Vec<String> {
    let marker = "extern \"C\" __global__ void ";
    source
        .match_indices(marker)
        .map(|(at, _)| {
            let rest = &source[at + marker.len()..];
            let end = rest.find('(').expect("a parameter list");
            rest[..end].trim().to_string()
        })
        .filter(|name| !name.contains("##"))
        .collect()
}

#[test]
fn kernels_compile_with_nvrtc_and_match_the_manifest() {
    let root = common::root();
    let out = tempfile::tempdir().expect("temp dir");
    let summary = common::run_reference("nvrtc_compile.py", &[out.path().to_str().unwrap()]);
    let summary: Value = serde_json::from_str(summary.trim()).expect("JSON summary");

    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("kernels/manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let archs: Vec<&str> = manifest["architectures"]
        .as_array()
        .expect("architectures")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!archs.is_empty());

    // file stem → arch → entries.
    let mut ptx: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<String>>>> =
        BTreeMap::new();
    for (stem, by_arch) in summary["ptx"].as_object().expect("ptx map") {
        for arch in &archs {
            let path = by_arch[*arch]
                .as_str()
                .unwrap_or_else(|| panic!("no {arch} PTX for {stem}.cu"));
            let text = std::fs::read_to_string(path).expect("PTX file");
            ptx.entry(stem.clone())
                .or_default()
                .insert(arch.to_string(), ptx_entries(&text));
        }
    }

    let mut listed = BTreeSet::new();
    for kernel in manifest["kernels"].as_array().expect("kernels") {
        let name = kernel["name"].as_str().expect("name");
        assert!(listed.insert(name.to_string()), "{name} listed twice");
        let file = kernel["file"].as_str().expect("file");
        let stem = file.strip_suffix(".cu").expect("a .cu file");
        let params = kernel["params"].as_array().expect("params");
        let count = kernel["param_count"].as_u64().expect("param_count") as usize;
        assert_eq!(
            params.len(),
            count,
            "{name}: param_count and params disagree"
        );
        let expected: Vec<&str> = params
            .iter()
            .map(|p| ptx_class(p["type"].as_str().expect("type")))
            .collect();
        for arch in &archs {
            let entries = &ptx[stem][*arch];
            let found = entries
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not an .entry of {file} ({arch})"));
            assert_eq!(found.len(), count, "{name} ({arch}): parameter count");
            assert_eq!(found, &expected, "{name} ({arch}): parameter types");
        }
    }

    // Every compiled entry point and every written kernel is in the manifest.
    for (stem, by_arch) in &ptx {
        for (arch, entries) in by_arch {
            for name in entries.keys() {
                assert!(
                    listed.contains(name),
                    "{name} ({stem}.cu, {arch}) is missing from kernels/manifest.json"
                );
            }
        }
        let source =
            std::fs::read_to_string(root.join("kernels").join(format!("{stem}.cu"))).unwrap();
        for name in written_kernels(&source) {
            assert!(
                listed.contains(&name),
                "{name} ({stem}.cu) is missing from kernels/manifest.json"
            );
        }
    }

    // The stacking family has every method at every MAXN.
    for method in [
        "sum",
        "mean",
        "median",
        "sigma_clip",
        "winsorized",
        "mad_clip",
        "percentile",
        "linear_fit",
    ] {
        for maxn in [32, 128, 512, 2048] {
            let name = format!("stack_{method}_f32_n{maxn}");
            assert!(listed.contains(&name), "{name} missing");
        }
    }
}
