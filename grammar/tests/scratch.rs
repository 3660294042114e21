#[test]
fn scratch() {
    let all = std::fs::read_to_string(std::env::var("SRC").unwrap()).unwrap();
    for src in all.split("=====\n") {
        match losslang_grammar::parse(src) {
            Ok(f) => print!("{}", losslang_grammar::print::print_file(&f)),
            Err(e) => {
                println!("{} {} | {:?} | {:?}", e.code, e.message, e.help, e.related);
            }
        }
    }
}
