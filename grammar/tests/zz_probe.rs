use losslang_grammar::parse;
use losslang_grammar::print::print_file;
#[test]
fn probe() {
    let path = std::env::var("PROBE").unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    for case in text.split("\n=====\n") {
        let src = case.replace("\\r", "\r");
        match parse(&src) {
            Ok(f) => println!("{src:?}\n  OK {}", print_file(&f).lines().count()),
            Err(e) => println!(
                "{src:?}\n  {} {} @{:?} {:?}\n  help {:?}",
                e.code,
                e.message,
                e.span_range,
                &src[e.span_range.start..e.span_range.end],
                e.help
            ),
        }
    }
}
