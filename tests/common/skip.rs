/// A test whose prerequisite is missing: under CI (`CI` or
/// `FERRY_REQUIRE_ALL` set, as `.ci/run` does) that is a failure, since a
/// skipped test proves nothing there; elsewhere the test is skipped with the
/// measured reason printed.
pub fn skip(reason: &str) {
    let required = ["CI", "FERRY_REQUIRE_ALL"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"));
    assert!(!required, "prerequisite missing: {reason}");
    eprintln!("skipped: {reason}");
}
