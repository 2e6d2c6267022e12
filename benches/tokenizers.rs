//! Tokenizer comparison behind `src/usage/estimate.rs`
//! (`cargo bench --locked --features bench-tokenizers --bench tokenizers`): tiktoken-rs (the
//! port of OpenAI's tiktoken sluice used first, the reference here), bpe-openai (GitHub's `bpe`
//! crates) and tiktoken (the `tiktoken` crate, goliajp/rust-tiktoken, which sluice uses), per
//! encoding (o200k_base, cl100k_base), on one generated corpus. Reports, per arm, the time to
//! build the tables on first use, the RSS they add (VmRSS and VmHWM from `/proc/self/status`,
//! each arm in a fresh child process with jemalloc as in the binary, before and after counting
//! the corpus), counting speed per kind of text, and whether every count and token id equals
//! tiktoken-rs's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Wall time spent counting one kind of text per arm (bounded loops: at most this long, at
/// least one pass).
const SPEED_BUDGET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lib {
    TiktokenRs,
    BpeOpenai,
    Tiktoken,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Enc {
    O200k,
    Cl100k,
}

/// Token count of a text.
type Counter = Box<dyn Fn(&str) -> usize>;
/// Token count and token ids of a text.
type Encoder = Box<dyn Fn(&str) -> (usize, Vec<u32>)>;

/// Builds `lib`'s tables for `enc` (first use) and returns a counter and an encoder.
fn load(lib: Lib, enc: Enc) -> (Counter, Encoder) {
    match lib {
        Lib::TiktokenRs => {
            let bpe = match enc {
                Enc::O200k => tiktoken_rs::o200k_base_singleton(),
                Enc::Cl100k => tiktoken_rs::cl100k_base_singleton(),
            };
            (
                Box::new(move |t| bpe.encode_ordinary(t).len()),
                Box::new(move |t| {
                    let ids = bpe.encode_ordinary(t);
                    (ids.len(), ids.into_iter().collect())
                }),
            )
        }
        Lib::Tiktoken => {
            let name = match enc {
                Enc::O200k => "o200k_base",
                Enc::Cl100k => "cl100k_base",
            };
            let tok = tiktoken::get_encoding(name).expect("encoding built in");
            (
                Box::new(move |t| tok.count(t)),
                Box::new(move |t| (tok.count(t), tok.encode(t))),
            )
        }
        Lib::BpeOpenai => {
            let tok = match enc {
                Enc::O200k => bpe_openai::o200k_base(),
                Enc::Cl100k => bpe_openai::cl100k_base(),
            };
            // Force the lazy tables now, so the load is measured apart from the counting.
            black_box(tok.count("warm"));
            (
                Box::new(move |t| tok.count(t)),
                Box::new(move |t| (tok.count(t), tok.encode(t))),
            )
        }
    }
}

/// A deterministic xorshift, so the "random" part of the corpus is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn repeat_to(piece: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + piece.len());
    while s.len() < bytes {
        s.push_str(piece);
    }
    s
}

/// The corpus: (kind, texts). Prose, code and JSON are repeated to ~32 KiB per text.
fn corpus() -> Vec<(&'static str, Vec<String>)> {
    let prose = "The quick brown fox jumps over the lazy dog. It's a sentence you'll see \
        often; they've used it since the 1880s to test typewriters, and we'd still use it \
        today. Numbers like 3.14159, 2026-11-29 and 1,234,567 split into groups of three.\n\n";
    let code = "fn main() {\n    let xs: Vec<u64> = (0..10).map(|x| x * x).collect();\n    \
        for (i, x) in xs.iter().enumerate() {\n        println!(\"{i}: {x:>4}\");\n    }\n}\n\
        def handler(event, ctx):\n\tif not event.get('body'):\n\t\treturn {'statusCode': 400}\n\
        \treturn json.dumps({\"ok\": True})  # trailing comment   \n";
    let json = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Summarise: \"rate limits\" apply per tenant, per model."}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":512}"#;
    let cjk = "日本語のテキストを数えます。東京は晴れ、気温は二十三度です。\
        中文文本的分词测试：今天天气很好，我们去公园散步吧。한국어 문장도 포함합니다. ";
    let emoji = "👍🏽 🎉🎉 👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, ❤️‍🔥, 🇯🇵🇫🇷 and text 😀😃😄😁 ";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let random_bytes: Vec<String> = (0..8)
        .map(|_| {
            let bytes: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect();
    let random_chars: Vec<String> = (0..8)
        .map(|_| {
            (0..2048)
                .filter_map(|_| char::from_u32((rng.next() % 0x3_0000) as u32))
                .collect()
        })
        .collect();
    let mut random = random_bytes;
    random.extend(random_chars);
    let repeated: Vec<String> = [
        "a", " ", "\n", "!", "ab", "0", "\u{00e9}", "日", " \n", "\t ",
    ]
    .iter()
    .flat_map(|p| [p.repeat(100), p.repeat(4096)])
    .collect();
    let edges: Vec<String> = [
        "",
        "<|endoftext|>",
        "<|im_start|>user<|im_end|>",
        "  leading and trailing  ",
        "a\r\nb\r\n\r\n c",
        "don't won't it's I'M YOU'RE",
        "x\u{0301}\u{0301} combining marks",
        "12345678901234567890",
        "   \n\n\t  \n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    vec![
        ("prose", vec![repeat_to(prose, 32 << 10)]),
        ("code", vec![repeat_to(code, 32 << 10)]),
        ("json", vec![repeat_to(json, 32 << 10)]),
        ("cjk", vec![repeat_to(cjk, 32 << 10)]),
        ("emoji", vec![repeat_to(emoji, 32 << 10)]),
        ("repeated", repeated),
        ("random", random),
        ("edges", edges),
    ]
}

/// (VmRSS, VmHWM) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One arm, in this (fresh) process: prints `load_ms rss_kib hwm_kib` then `kind MB/s` lines.
fn run_arm(lib: Lib, enc: Enc) {
    let texts = corpus();
    let (rss0, _) = rss_kib();
    let start = Instant::now();
    let (count, _) = load(lib, enc);
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let (rss1, hwm1) = rss_kib();
    println!(
        "load {load_ms:.1} {} {}",
        rss1.saturating_sub(rss0),
        hwm1.saturating_sub(rss0)
    );
    for (kind, items) in &texts {
        let bytes: usize = items.iter().map(String::len).sum();
        let start = Instant::now();
        let mut passes = 0u32;
        while passes == 0 || start.elapsed() < SPEED_BUDGET {
            for t in items {
                black_box(count(black_box(t)));
            }
            passes += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{kind} {:.2}",
            bytes as f64 * f64::from(passes) / secs / 1e6
        );
    }
    let (rss2, hwm2) = rss_kib();
    println!(
        "counted rss {} hwm {}",
        rss2.saturating_sub(rss0),
        hwm2.saturating_sub(rss0)
    );
}

fn parse_arm(lib: &str, enc: &str) -> Option<(Lib, Enc)> {
    let lib = match lib {
        "tiktoken-rs" => Lib::TiktokenRs,
        "bpe-openai" => Lib::BpeOpenai,
        "tiktoken" => Lib::Tiktoken,
        _ => return None,
    };
    let enc = match enc {
        "o200k" => Enc::O200k,
        "cl100k" => Enc::Cl100k,
        _ => return None,
    };
    Some((lib, enc))
}

/// Token counts (and ids) of each candidate against tiktoken-rs on every text of the corpus.
fn exactness() {
    let corpus = corpus();
    for (lib, enc) in [
        (Lib::BpeOpenai, Enc::O200k),
        (Lib::BpeOpenai, Enc::Cl100k),
        (Lib::Tiktoken, Enc::O200k),
        (Lib::Tiktoken, Enc::Cl100k),
    ] {
        let (_, reference) = load(Lib::TiktokenRs, enc);
        let (_, candidate) = load(lib, enc);
        let (mut texts, mut tokens, mut differ) = (0, 0, Vec::new());
        for (kind, items) in &corpus {
            for (i, t) in items.iter().enumerate() {
                let (want, want_ids) = reference(t);
                let (got, got_ids) = candidate(t);
                texts += 1;
                tokens += want;
                if want != got || want_ids != got_ids || got_ids.len() != got {
                    differ.push(format!("{kind}[{i}]: tiktoken-rs {want}, {lib:?} {got}"));
                }
            }
        }
        println!(
            "exactness {lib:?} {enc:?}: {texts} texts, {tokens} tokens, {} differ{}",
            differ.len(),
            if differ.is_empty() { "" } else { ":" }
        );
        for d in differ {
            println!("  {d}");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--arm") {
        if let Some((lib, enc)) = args
            .get(i + 1)
            .zip(args.get(i + 2))
            .and_then(|(l, e)| parse_arm(l, e))
        {
            run_arm(lib, enc);
            return;
        }
        eprintln!("usage: --arm tiktoken-rs|bpe-openai|tiktoken o200k|cl100k");
        std::process::exit(2);
    }
    // `cargo test --benches` runs bench targets with no `--bench`: check exactness only.
    let full = args.iter().any(|a| a == "--bench");
    exactness();
    if !full {
        return;
    }
    let me = std::env::current_exe().expect("own path");
    let mut table: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (lib, enc) in [
        ("tiktoken-rs", "o200k"),
        ("bpe-openai", "o200k"),
        ("tiktoken", "o200k"),
        ("tiktoken-rs", "cl100k"),
        ("bpe-openai", "cl100k"),
        ("tiktoken", "cl100k"),
    ] {
        let out = Command::new(&me)
            .args(["--arm", lib, enc])
            .output()
            .expect("run arm");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        table.push((format!("{lib}/{enc}"), rows));
    }
    println!(
        "\narm                 load_ms  rss_KiB  hwm_KiB  (after load; then MB/s per kind; RSS after counting)"
    );
    for (arm, rows) in &table {
        let mut line = format!("{arm:<19}");
        for (k, v) in rows {
            if k == "load" {
                let parts: Vec<&str> = v.split(' ').collect();
                for p in parts {
                    line.push_str(&format!(" {p:>8}"));
                }
            } else {
                line.push_str(&format!("  {k} {v}"));
            }
        }
        println!("{line}");
    }
}
