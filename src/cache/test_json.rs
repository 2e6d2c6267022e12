//! Test support: generated JSON text for the property tests of the canonical form and of the
//! recorder's top-level read.

use proptest::prelude::*;

/// JSON text with every kind of value, duplicate and escaped keys, compact or with
/// whitespace; `named`:
/// keys (JSON-quoted) drawn often besides random ones, the members the code under test reads.
pub fn json_text(named: &'static [&'static str]) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1e6f64..1e6).prop_map(|f| format!("{f:e}")),
        Just("0.0".to_owned()),
        Just("-0".to_owned()),
        // Printed with escapes (`"`, `\\`, tab) or verbatim (DEL, `/`, non-ASCII).
        "[a-z \"\\\\é\u{1F600}\t\u{7f}/]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""\u00e9\n""#.to_owned()),
    ];
    leaf.prop_recursive(4, 32, 5, move |inner| {
        let key = prop_oneof![
            "[a-z/é\u{7f}]{1,3}".prop_map(|k| serde_json::to_string(&k).unwrap()),
            Just(r#""\u0061""#.to_owned()),
            prop::sample::select(named.to_vec()).prop_map(str::to_owned),
        ];
        // Compact (as SDKs send), spaced, or spread over lines.
        let ws = || prop::sample::select(vec!["", " ", "\n  "]);
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), ws())
                .prop_map(|(items, w)| format!("[{w}{}{w}]", items.join(&format!("{w},{w}")))),
            (prop::collection::vec((key, inner), 0..5), ws()).prop_map(|(members, w)| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{w}{}{w}}}", members.join(&format!("{w},{w}")))
            }),
        ]
    })
}
