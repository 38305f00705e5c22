//! One line per scenario result, printed by the harness and parsed by `xtask`:
//! `RESULT <name> PASS|FAIL <detail>`.

/// Outcome of one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioResult {
    /// Scenario name (no spaces).
    pub name: String,
    /// Whether every assertion held.
    pub passed: bool,
    /// What was checked or what went wrong (one line).
    pub detail: String,
}

const PREFIX: &str = "RESULT ";

impl ScenarioResult {
    /// A result line for `name`.
    #[must_use]
    pub fn new(name: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.replace(' ', "_"),
            passed,
            detail: detail.into().replace(['\n', '\r'], " "),
        }
    }

    /// The line the harness prints.
    #[must_use]
    pub fn to_line(&self) -> String {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        format!("{PREFIX}{} {verdict} {}", self.name, self.detail)
    }

    /// Parses a line printed by [`Self::to_line`]; other lines give `None`.
    #[must_use]
    pub fn parse_line(line: &str) -> Option<Self> {
        let rest = line.trim_end().strip_prefix(PREFIX)?;
        let (name, rest) = rest.split_once(' ')?;
        let (verdict, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let passed = match verdict {
            "PASS" => true,
            "FAIL" => false,
            _ => return None,
        };
        Some(Self {
            name: name.to_owned(),
            passed,
            detail: detail.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trips() {
        let r = ScenarioResult::new("short output", false, "got 5\nexpected 122");
        let line = r.to_line();
        assert_eq!(line, "RESULT short_output FAIL got 5 expected 122");
        assert_eq!(ScenarioResult::parse_line(&line), Some(r));
    }

    #[test]
    fn parse_ignores_other_lines_and_bad_verdicts() {
        assert_eq!(ScenarioResult::parse_line("fixme:ntdll: something"), None);
        assert_eq!(ScenarioResult::parse_line("RESULT x MAYBE y"), None);
        let bare = ScenarioResult::parse_line("RESULT x PASS\r\n").unwrap();
        assert!(bare.passed);
        assert_eq!(bare.detail, "");
    }
}
