//! Parse + validate + substitute a 500-action formula (issue #2 target: under 5 ms).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use minion_formula::{parse_formula, yaml, Vars};

fn formula_text(actions: usize) -> String {
    let mut s =
        String::from("name: bench\nnamespace: qa\ninput:\n  args: [koji_build, arch]\nactions:\n");
    for i in 0..actions {
        match i % 3 {
            0 => s.push_str(&format!(
                "  - name: step {i}\n    shell:\n      - echo ${{koji_build}} $arch {i}\n      - ignorereturn: ['test -e ${{workdir}}/f{i}']\n    export: out{i}\n"
            )),
            1 => s.push_str(&format!(
                "  - python:\n      file: check.py\n      callable: run\n      nvr: ${{koji_build}}\n      n: {i}\n      arches: [$arch, noarch]\n"
            )),
            _ => s.push_str("  - exitcode:\n      result_worst: ${results}\n"),
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = formula_text(500);
    let mut vars = Vars::new();
    for (k, v) in [
        ("koji_build", "foo-1.0-1.fc40"),
        ("arch", "x86_64"),
        ("workdir", "/tmp/w"),
        ("results", "results: []"),
    ] {
        vars.insert(k.into(), serde_json::Value::String(v.into()));
    }
    c.bench_function("parse_validate_substitute_500_actions", |b| {
        b.iter(|| {
            let f = parse_formula(Path::new("bench.yml"), &text).expect("valid formula");
            let mut n = 0;
            for a in &f.actions {
                let out = minion_formula::substitute_params(a, &vars).expect("substitutes");
                n += matches!(out.kind, yaml::Kind::Map(_) | yaml::Kind::Seq(_)) as usize;
            }
            assert_eq!(n, 500);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
