//! Where each node of a YAML (or JSON) document starts, by path
//! (`security_groups[2].ingress[0].ip_ranges[1]`), so that validation, which
//! runs on deserialized values, can still name the line of what it rejects.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

/// AWS spellings and aliases, mapped to the names validation uses in paths.
fn canonical(key: &str) -> &str {
    match key {
        "IpPermissions" | "inbound" => "ingress",
        "IpPermissionsEgress" | "outbound" => "egress",
        "IpRanges" => "ip_ranges",
        "Ipv6Ranges" => "ipv6_ranges",
        "PrefixListIds" => "prefix_list_ids",
        "UserIdGroupPairs" => "user_id_group_pairs",
        "IpProtocol" | "protocol" => "ip_protocol",
        "FromPort" => "from_port",
        "ToPort" => "to_port",
        "GroupName" => "name",
        "GroupId" => "id",
        "Description" => "description",
        "VpcId" => "vpc",
        other => other,
    }
}

enum Frame {
    Map {
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        next: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    path: Vec<String>,
    lines: HashMap<String, usize>,
}

impl Builder {
    fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.path {
            if p.starts_with('[') || s.is_empty() {
                s.push_str(p);
            } else {
                s.push('.');
                s.push_str(p);
            }
        }
        s
    }

    /// A node starts: name its place in the parent, record its line.
    fn enter(&mut self, line: usize) -> bool {
        let seg = match self.stack.last_mut() {
            Some(Frame::Map { key, expecting_key }) => {
                if *expecting_key {
                    return false;
                }
                key.clone().unwrap_or_default()
            }
            Some(Frame::Seq { next }) => {
                *next += 1;
                format!("[{}]", *next - 1)
            }
            None => String::new(),
        };
        self.path.push(seg);
        let p = self.render();
        self.lines.entry(p).or_insert(line);
        true
    }

    /// A node ended: the parent map expects a key again.
    fn leave(&mut self) {
        self.path.pop();
        if let Some(Frame::Map { expecting_key, .. }) = self.stack.last_mut() {
            *expecting_key = true;
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key, expecting_key }) = self.stack.last_mut()
                    && *expecting_key
                {
                    *key = Some(canonical(&value).to_string());
                    *expecting_key = false;
                    // The key's line stands for a value that starts later.
                    self.path.push(canonical(&value).to_string());
                    let p = self.render();
                    self.lines.entry(p).or_insert(line);
                    self.path.pop();
                    return;
                }
                if self.enter(line) {
                    self.leave();
                }
            }
            Event::MappingStart(..) => {
                self.enter(line);
                self.stack.push(Frame::Map {
                    key: None,
                    expecting_key: true,
                });
            }
            Event::SequenceStart(..) => {
                self.enter(line);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave();
            }
            Event::Alias(_) if self.enter(line) => self.leave(),
            _ => {}
        }
    }
}

impl LineIndex {
    /// Indexes `text`; a document that does not parse gives an empty index
    /// (serde_yaml reports its error with a line of its own).
    pub fn new(text: &str) -> LineIndex {
        let mut b = Builder {
            stack: Vec::new(),
            path: Vec::new(),
            lines: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return LineIndex::default();
        }
        LineIndex { lines: b.lines }
    }

    /// The line of `path`, or of its nearest recorded ancestor.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_to_lines() {
        let text = "a: 1\nsecurity_groups:\n  - name: web\n    IpPermissions:\n      - IpProtocol: tcp\n        IpRanges:\n          - 10.0.0.0/8\n          - {CidrIp: 1.2.3.4/32}\n  - name: db\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line("a"), Some(1));
        assert_eq!(idx.line("security_groups[0]"), Some(3));
        assert_eq!(idx.line("security_groups[0].name"), Some(3));
        assert_eq!(idx.line("security_groups[0].ingress[0]"), Some(5));
        assert_eq!(
            idx.line("security_groups[0].ingress[0].ip_ranges[1]"),
            Some(8)
        );
        assert_eq!(
            idx.line("security_groups[0].ingress[0].ip_ranges[7]"),
            Some(6),
            "nearest ancestor"
        );
        assert_eq!(idx.line("security_groups[1].name"), Some(9));
        let json =
            "{\n \"SecurityGroups\": [\n  {\"GroupName\": \"x\",\n   \"IpPermissions\": []}\n ]\n}";
        let idx = LineIndex::new(json);
        assert_eq!(idx.line("SecurityGroups[0].name"), Some(3));
        assert_eq!(idx.line("SecurityGroups[0].ingress"), Some(4));
    }
}
