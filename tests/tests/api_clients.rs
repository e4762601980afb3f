//! The EC2 API driven by boto3: pagination, filters, AWS's error codes,
//! tags on every kind, descriptions, stale groups and references, interface
//! settings, STS, and the audit trail's filters.

use sg_tests::*;

#[test]
fn boto3_pages_filters_and_gets_awss_error_codes() {
    if !kernel_available("boto3_pages_filters_and_gets_awss_error_codes") {
        return;
    }
    let pair = Pair::new("apiboto").unwrap();
    let state = TempDir::new().unwrap();
    let _agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let v = boto3(&pair.server, ADMIN, r#"
c = ec2()
ids = [c.create_security_group(GroupName=f't-{i}', Description='paged', TagSpecifications=[{'ResourceType': 'security-group', 'Tags': [{'Key': 'Name', 'Value': f't-{i}'}]}])['GroupId'] for i in range(7)]
p1 = c.describe_security_groups(MaxResults=5)
p2 = c.describe_security_groups(MaxResults=5, NextToken=p1['NextToken'])
everything = c.describe_security_groups()
tagged = c.describe_security_groups(Filters=[{'Name': 'tag:Name', 'Values': ['t-3']}])['SecurityGroups']
c.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.9.0.0/16'}]}])
by_port = c.describe_security_groups(Filters=[{'Name': 'ip-permission.from-port', 'Values': ['53']}, {'Name': 'ip-permission.protocol', 'Values': ['udp']}])['SecurityGroups']
rules = c.describe_security_group_rules(Filters=[{'Name': 'group-id', 'Values': [ids[0]]}])['SecurityGroupRules']
app = c.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['app']}])['SecurityGroups'][0]['GroupId']
default = c.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': ['default']}])['SecurityGroups'][0]['GroupId']
eni = c.describe_network_interfaces(Filters=[{'Name': 'tag:sg:interface', 'Values': ['eth0']}])['NetworkInterfaces'][0]['NetworkInterfaceId']
vpc = c.create_vpc(CidrBlock='10.50.0.0/16')['Vpc']['VpcId']
other = c.create_security_group(GroupName='far', Description='in another VPC', VpcId=vpc)['GroupId']
perm = [{'IpProtocol': 'tcp', 'FromPort': 1, 'ToPort': 2, 'IpRanges': [{'CidrIp': '10.1.0.0/16'}]}]
sixty_one = [{'IpProtocol': 'tcp', 'FromPort': 7, 'ToPort': 7, 'IpRanges': [{'CidrIp': f'10.{i}.0.0/16'} for i in range(61)]}]
codes = {
  'InvalidGroup.NotFound': code(lambda: c.describe_security_groups(GroupIds=['sg-0123456789abcdef0'])),
  'InvalidGroup.Duplicate': code(lambda: c.create_security_group(GroupName='t-1', Description='again')),
  'InvalidPermission.Duplicate': code(lambda: c.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.9.0.0/16'}]}])),
  'InvalidPermission.NotFound': code(lambda: c.revoke_security_group_ingress(GroupId=other, IpPermissions=perm)),
  'CannotDelete': code(lambda: c.delete_security_group(GroupId=default)),
  'DependencyViolation': code(lambda: c.delete_security_group(GroupId=app)),
  'RulesPerSecurityGroupLimitExceeded': code(lambda: c.authorize_security_group_ingress(GroupId=ids[1], IpPermissions=sixty_one)),
  'SecurityGroupsPerInterfaceLimitExceeded': code(lambda: c.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=ids[:6])),
  'InvalidParameterValue': code(lambda: c.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 5, 'ToPort': 5, 'IpRanges': [{'CidrIp': '10.0.0.0/33'}]}])),
  'DryRunOperation': code(lambda: c.delete_security_group(GroupId=ids[6], DryRun=True)),
  'InvalidAction': code(lambda: c.describe_instances()),
  'InvalidVpcID.NotFound': code(lambda: c.create_security_group(GroupName='x', Description='x', VpcId='vpc-0123456789abcdef0')),
  'InvalidSecurityGroupRuleId.NotFound': code(lambda: c.revoke_security_group_ingress(GroupId=ids[0], SecurityGroupRuleIds=['sgr-0123456789abcdef0'])),
  'InvalidPrefixListID.NotFound': code(lambda: c.get_managed_prefix_list_entries(PrefixListId='pl-0123456789abcdef0')),
  'MissingParameter': code(lambda: c.authorize_security_group_ingress(GroupId=ids[0])),
}
def message(f):
    try:
        f()
        return 'OK'
    except botocore.exceptions.ClientError as e:
        return e.response['Error']['Message']
where = message(lambda: c.authorize_security_group_ingress(GroupId=ids[2], IpPermissions=[perm[0], {'IpProtocol': 'tcp', 'FromPort': 5, 'ToPort': 5, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}, {'CidrIp': '10.0.0.0/33'}]}]))
still = [g['GroupId'] for g in c.describe_security_groups()['SecurityGroups']]
print(json.dumps({'p1': len(p1['SecurityGroups']), 'next': 'NextToken' in p1, 'p2': len(p2['SecurityGroups']), 'p2next': 'NextToken' in p2,
  'all': len(everything['SecurityGroups']), 'allnext': 'NextToken' in everything, 'tagged': [g['GroupName'] for g in tagged],
  'by_port': [g['GroupId'] for g in by_port], 'rules': len(rules), 'ids': ids, 'codes': codes, 'dry_run_kept': ids[6] in still, 'where': where}))
"#).unwrap();
    // default, app, clients, seven t-N: ten groups, paged 5 + 5.
    assert_eq!(
        (v["p1"].as_u64(), v["next"].as_bool()),
        (Some(5), Some(true)),
        "{v}"
    );
    assert_eq!(
        (v["p2"].as_u64(), v["p2next"].as_bool()),
        (Some(5), Some(false)),
        "{v}"
    );
    assert_eq!(
        (v["all"].as_u64(), v["allnext"].as_bool()),
        (Some(10), Some(false)),
        "pages only when asked: {v}"
    );
    assert_eq!(v["tagged"], serde_json::json!(["t-3"]));
    assert_eq!(v["by_port"], serde_json::json!([v["ids"][0]]));
    assert_eq!(
        v["rules"], 3,
        "the new rule and the default egress, IPv4 and IPv6: {v}"
    );
    for (expected, got) in v["codes"].as_object().unwrap() {
        assert_eq!(got, expected, "{v}");
    }
    assert_eq!(v["dry_run_kept"], true, "a dry run changes nothing");
    let at = v["where"].as_str().unwrap();
    assert!(
        at.starts_with("IpPermissions.2.IpRanges.2.CidrIp: "),
        "the parameter is named: {at}"
    );
}

#[test]
fn boto3_tags_descriptions_stale_references_and_conntrack_timeouts() {
    if !kernel_available("boto3_tags_descriptions_stale_references_and_conntrack_timeouts") {
        return;
    }
    let pair = Pair::new("apimore").unwrap();
    let state = TempDir::new().unwrap();
    let agent = Agent::start_managed(&pair.server, &state.0, API_SEED).unwrap();
    let started = sg_agent::api::audit::now();
    let script = r#"
c = ec2()
one = lambda name: c.describe_security_groups(Filters=[{'Name': 'group-name', 'Values': [name]}])['SecurityGroups'][0]
app = one('app')['GroupId']
eni = c.describe_network_interfaces(Filters=[{'Name': 'tag:sg:interface', 'Values': ['eth0']}])['NetworkInterfaces'][0]['NetworkInterfaceId']
vpc = c.create_vpc(CidrBlock='10.51.0.0/16', TagSpecifications=[{'ResourceType': 'vpc', 'Tags': [{'Key': 'Name', 'Value': 'b'}]}])['Vpc']['VpcId']
far = c.create_security_group(GroupName='far', Description='in vpc b', VpcId=vpc)['GroupId']
pl = c.create_managed_prefix_list(PrefixListName='pl', MaxEntries=2, AddressFamily='IPv4', Entries=[{'Cidr': '10.1.0.0/16'}])['PrefixList']['PrefixListId']
# A reference across VPCs that are not peered: kept, stale, matching nothing.
c.authorize_security_group_ingress(GroupId=app, IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 5000, 'ToPort': 5000, 'UserIdGroupPairs': [{'GroupId': far, 'VpcId': vpc}]}])
stale = c.describe_stale_security_groups(VpcId=one('app')['VpcId'])['StaleSecurityGroupSet']
refs = c.describe_security_group_references(GroupId=[far])['SecurityGroupReferenceSet']
# Descriptions: by permission, then by rule id.
c.authorize_security_group_ingress(GroupId=app, IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.2.0.0/16', 'Description': 'v1'}]}])
c.update_security_group_rule_descriptions_ingress(GroupId=app, IpPermissions=[{'IpProtocol': 'udp', 'FromPort': 53, 'ToPort': 53, 'IpRanges': [{'CidrIp': '10.2.0.0/16', 'Description': 'v2'}]}])
rule = [r for r in c.describe_security_group_rules(Filters=[{'Name': 'group-id', 'Values': [app]}])['SecurityGroupRules'] if r.get('FromPort') == 53][0]
by_perm = rule.get('Description')
c.update_security_group_rule_descriptions_ingress(GroupId=app, SecurityGroupRuleDescriptions=[{'SecurityGroupRuleId': rule['SecurityGroupRuleId'], 'Description': 'v3'}])
c.modify_security_group_rules(GroupId=app, SecurityGroupRules=[{'SecurityGroupRuleId': rule['SecurityGroupRuleId'], 'SecurityGroupRule': {'IpProtocol': 'udp', 'FromPort': 54, 'ToPort': 54, 'CidrIpv4': '10.2.0.0/16', 'Description': 'v4'}}])
after = c.describe_security_group_rules(SecurityGroupRuleIds=[rule['SecurityGroupRuleId']])['SecurityGroupRules'][0]
# Tags on every kind.
for rid in [vpc, pl, eni, rule['SecurityGroupRuleId'], app]:
    c.create_tags(Resources=[rid], Tags=[{'Key': 'team', 'Value': 'net'}])
tagged = sorted(t['ResourceType'] for t in c.describe_tags(Filters=[{'Name': 'key', 'Values': ['team']}])['Tags'])
c.delete_tags(Resources=[pl], Tags=[{'Key': 'team'}])
left = sorted(t['ResourceId'] for t in c.describe_tags(Filters=[{'Name': 'key', 'Values': ['team']}])['Tags'])
# Connection-tracking timeouts of an interface (newer than Debian's
# botocore: sent as the current SDKs serialise them).
K, S = c._request_signer._credentials.access_key, c._request_signer._credentials.secret_key
mod = 'Action=ModifyNetworkInterfaceAttribute&Version=2016-11-15&NetworkInterfaceId=' + eni
set_ct = err(send(mod + '&ConnectionTrackingSpecification.TcpEstablishedTimeout=3600&ConnectionTrackingSpecification.UdpTimeout=60', K, S))
shown = send('Action=DescribeNetworkInterfaces&Version=2016-11-15&NetworkInterfaceId.1=' + eni, K, S)
ct = {'TcpEstablishedTimeout': 3600 if '<tcpEstablishedTimeout>3600</tcpEstablishedTimeout>' in shown else shown, 'UdpTimeout': 60 if '<udpTimeout>60</udpTimeout>' in shown else shown, 'set': set_ct}
bad_ct = err(send(mod + '&ConnectionTrackingSpecification.UdpTimeout=5', K, S))
# Rebinding an interface object to another Linux interface.
c.create_tags(Resources=['eni-00000000000000c11'], Tags=[{'Key': 'sg:interface', 'Value': 'ghost1'}])
bound = [t['Value'] for t in c.describe_network_interfaces(NetworkInterfaceIds=['eni-00000000000000c11'])['NetworkInterfaces'][0]['TagSet'] if t['Key'] == 'sg:interface']
unbind = code(lambda: c.delete_tags(Resources=['eni-00000000000000c11'], Tags=[{'Key': 'sg:interface'}]))
bad_name = code(lambda: c.create_tags(Resources=['eni-00000000000000c11'], Tags=[{'Key': 'sg:interface', 'Value': 'a/b'}]))
who = boto3.client('sts', endpoint_url=ENDPOINT, region_name='us-east-1', aws_access_key_id=c._request_signer._credentials.access_key, aws_secret_access_key=c._request_signer._credentials.secret_key).get_caller_identity()
print(json.dumps({'stale': [(g['GroupId'], [p['UserIdGroupPairs'][0]['GroupId'] for p in g['StaleIpPermissions']]) for g in stale],
  'refs': [(r['GroupId'], r['ReferencingVpcId']) for r in refs], 'app': app, 'far': far, 'app_vpc': one('app')['VpcId'],
  'by_perm': by_perm, 'after': [after['FromPort'], after.get('Description'), after['SecurityGroupRuleId'] == rule['SecurityGroupRuleId']],
  'tagged': tagged, 'left': left, 'pl': pl, 'ct': ct, 'bad_ct': bad_ct, 'who': [who['Account'], who['Arn']], 'bound': bound, 'unbind': unbind, 'bad_name': bad_name}))
"#;
    let v = boto3(&pair.server, ADMIN, &format!("{SIGNED_PY}\n{script}")).unwrap();
    let (app, far) = (v["app"].as_str().unwrap(), v["far"].as_str().unwrap());
    assert_eq!(v["stale"], serde_json::json!([[app, [far]]]), "{v}");
    assert_eq!(v["refs"], serde_json::json!([[far, v["app_vpc"]]]), "{v}");
    assert_eq!(v["by_perm"], "v2", "{v}");
    assert_eq!(
        v["after"],
        serde_json::json!([54, "v4", true]),
        "modified in place, same id: {v}"
    );
    assert_eq!(
        v["tagged"],
        serde_json::json!([
            "network-interface",
            "prefix-list",
            "security-group",
            "security-group-rule",
            "vpc"
        ]),
        "{v}"
    );
    assert!(!v["left"].as_array().unwrap().contains(&v["pl"]), "{v}");
    assert_eq!(v["ct"]["set"], "OK", "{v}");
    assert_eq!(v["ct"]["TcpEstablishedTimeout"], 3600, "{v}");
    assert_eq!(v["ct"]["UdpTimeout"], 60, "{v}");
    assert_eq!(
        v["bad_ct"], "InvalidParameterValue",
        "AWS's bounds on timeouts: {v}"
    );
    assert_eq!(
        v["who"],
        serde_json::json!([ACCOUNT, "arn:aws:iam::123456789012:user/admin"]),
        "{v}"
    );
    assert_eq!(v["bound"], serde_json::json!(["ghost1"]), "rebound: {v}");
    assert_eq!(v["unbind"], "InvalidParameterValue", "{v}");
    assert_eq!(v["bad_name"], "InvalidParameterValue", "{v}");
    // The trail filters by time, as `aws cloudtrail lookup-events` does.
    let since = lookup_events(
        &agent.state,
        &["--start-time", &started, "--event-name", "CreateTags"],
    );
    assert_eq!(
        since.len(),
        7,
        "five tags, a rebinding, a refused one: {since:?}"
    );
    let none = lookup_events(&agent.state, &["--end-time", "2000-01-01T00:00:00Z"]);
    assert!(none.is_empty());
}
