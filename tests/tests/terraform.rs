//! Terraform's `hashicorp/aws` provider, unmodified, drives sg: inline
//! rules, separate rule resources (new and legacy), group references,
//! prefix lists, the default group of a new VPC, `terraform import`, and a
//! group attached to an sg interface. After each apply the kernel's verdicts
//! between the namespaces follow the configuration, and `terraform plan`
//! finds nothing to change.

use std::time::Duration;

use sg_tests::*;

const T: Duration = Duration::from_secs(2);

/// The server's eth0, in the default VPC with a `base` group that allows
/// nothing in: whatever passes, Terraform's groups let through.
const SEED: &str = r#"
security_groups:
  - {name: base, description: nothing in}
network_interfaces:
  - {interface: eth0, id: eni-0000000000000e770, private_ipv4: [10.77.0.2], groups: [base]}
"#;

const STAGE_1: &str = r#"
data "aws_vpc" "default" {
  default = true
}
resource "aws_vpc" "lab" {
  cidr_block = "10.60.0.0/16"
  tags       = { Name = "lab" }
}
resource "aws_default_security_group" "lab" {
  vpc_id = aws_vpc.lab.id
  ingress {
    protocol  = -1
    self      = true
    from_port = 0
    to_port   = 0
  }
}
resource "aws_ec2_managed_prefix_list" "callers" {
  name           = "callers"
  address_family = "IPv4"
  max_entries    = 5
  entry {
    cidr        = "10.77.0.1/32"
    description = "the client"
  }
}
resource "aws_security_group" "callers" {
  name        = "callers"
  description = "who calls the app"
  vpc_id      = data.aws_vpc.default.id
}
resource "aws_security_group" "app" {
  name        = "app"
  description = "the server, by terraform"
  vpc_id      = data.aws_vpc.default.id
  ingress {
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = ["10.77.0.0/24"]
    description = "web"
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = { Name = "app" }
}
resource "aws_security_group" "svc" {
  name        = "svc"
  description = "rules as resources of their own"
  vpc_id      = data.aws_vpc.default.id
}
resource "aws_vpc_security_group_ingress_rule" "from_callers_list" {
  security_group_id = aws_security_group.svc.id
  prefix_list_id    = aws_ec2_managed_prefix_list.callers.id
  ip_protocol       = "tcp"
  from_port         = 9090
  to_port           = 9090
  tags              = { Name = "pl" }
}
resource "aws_vpc_security_group_ingress_rule" "from_callers_group" {
  security_group_id            = aws_security_group.svc.id
  referenced_security_group_id = aws_security_group.callers.id
  ip_protocol                  = "tcp"
  from_port                    = 7000
  to_port                      = 7000
}
resource "aws_network_interface_sg_attachment" "app" {
  security_group_id    = aws_security_group.app.id
  network_interface_id = "eni-0000000000000e770"
}
resource "aws_network_interface_sg_attachment" "svc" {
  security_group_id    = aws_security_group.svc.id
  network_interface_id = "eni-0000000000000e770"
}
"#;

/// Stage 2: the inline rule goes (`ingress = []`), the list's entry moves away, a legacy
/// rule resource opens 7070, and a group created outside Terraform is
/// imported.
const STAGE_2: &str = r#"
data "aws_vpc" "default" {
  default = true
}
resource "aws_ec2_managed_prefix_list" "callers" {
  name           = "callers"
  address_family = "IPv4"
  max_entries    = 5
  entry {
    cidr        = "10.99.0.1/32"
    description = "someone else"
  }
}
resource "aws_security_group" "callers" {
  name        = "callers"
  description = "who calls the app"
  vpc_id      = data.aws_vpc.default.id
}
resource "aws_security_group" "app" {
  name        = "app"
  description = "the server, by terraform"
  vpc_id      = data.aws_vpc.default.id
  ingress     = []
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = { Name = "app" }
}
resource "aws_security_group" "svc" {
  name        = "svc"
  description = "rules as resources of their own"
  vpc_id      = data.aws_vpc.default.id
}
resource "aws_vpc_security_group_ingress_rule" "from_callers_list" {
  security_group_id = aws_security_group.svc.id
  prefix_list_id    = aws_ec2_managed_prefix_list.callers.id
  ip_protocol       = "tcp"
  from_port         = 9090
  to_port           = 9090
  description       = "changed in place"
  tags              = { Name = "pl", stage = "2" }
}
resource "aws_security_group_rule" "legacy" {
  type              = "ingress"
  security_group_id = aws_security_group.svc.id
  from_port         = 7070
  to_port           = 7070
  protocol          = "tcp"
  cidr_blocks       = ["10.77.0.0/24"]
}
resource "aws_network_interface_sg_attachment" "app" {
  security_group_id    = aws_security_group.app.id
  network_interface_id = "eni-0000000000000e770"
}
resource "aws_network_interface_sg_attachment" "svc" {
  security_group_id    = aws_security_group.svc.id
  network_interface_id = "eni-0000000000000e770"
}
"#;

const IMPORTED: &str = r#"
resource "aws_security_group" "imported" {
  name        = "made-by-hand"
  description = "created with the AWS CLI"
  vpc_id      = data.aws_vpc.default.id
  egress {
    from_port        = 0
    to_port          = 0
    protocol         = "-1"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }
}
"#;

fn verdicts(pair: &Pair, ports: &[u16]) -> Vec<(u16, Seen)> {
    ports
        .iter()
        .map(|p| (*p, tcp_probe(&pair.client, addr(SERVER_V4, *p), T).unwrap()))
        .collect()
}

fn no_changes(tf: &Terraform, when: &str) {
    let (code, out) = tf.plan().unwrap();
    assert_eq!(code, 0, "terraform plan after {when} wants changes:\n{out}");
}

#[test]
fn terraform_apply_plan_import_destroy_drive_the_kernel() {
    if !kernel_available("terraform_apply_plan_import_destroy_drive_the_kernel") {
        return;
    }
    let pair = Pair::new("tf").unwrap();
    for port in [7000, 7070, 8080, 9090] {
        tcp_echo_server(&pair.server, addr(SERVER_V4, port)).unwrap();
    }
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, SEED).unwrap();
    let ns = &pair.server;
    let tf = Terraform::new(ns).unwrap();
    assert_eq!(
        verdicts(&pair, &[8080]),
        [(8080, Seen::Dropped)],
        "base lets nothing in"
    );

    tf.config(STAGE_1).unwrap();
    tf.init().unwrap();
    tf.apply().unwrap();
    no_changes(&tf, "the first apply");
    // The client is in the prefix list but not a member of `callers`.
    assert_eq!(
        verdicts(&pair, &[8080, 9090, 7000, 7070]),
        [
            (8080, Seen::Pass),
            (9090, Seen::Pass),
            (7000, Seen::Dropped),
            (7070, Seen::Dropped)
        ]
    );

    // A group made by hand, then imported.
    let made = aws(
        ns,
        ADMIN,
        &[
            "create-security-group",
            "--group-name",
            "made-by-hand",
            "--description",
            "created with the AWS CLI",
        ],
    )
    .ok();
    let made = made["GroupId"].as_str().unwrap().to_string();
    tf.config(&format!("{STAGE_2}{IMPORTED}")).unwrap();
    tf.run(&[
        "import",
        "-input=false",
        "aws_security_group.imported",
        &made,
    ])
    .unwrap();
    tf.apply().unwrap();
    no_changes(&tf, "the second apply and the import");
    assert_eq!(
        verdicts(&pair, &[8080, 9090, 7070]),
        [
            (8080, Seen::Dropped),
            (9090, Seen::Dropped),
            (7070, Seen::Pass)
        ]
    );

    tf.destroy().unwrap();
    assert_eq!(
        verdicts(&pair, &[7070]),
        [(7070, Seen::Dropped)],
        "back to base alone"
    );
    let left = aws(ns, ADMIN, &["describe-security-groups"]).ok();
    let mut names: Vec<&str> = left["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["GroupName"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["base", "default"],
        "destroy removed everything it made"
    );
}
