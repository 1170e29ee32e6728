#!/usr/bin/python
"""Set or remove the reverse DNS (PTR) name of an EC2 Elastic IP address.

Ansible module; the documentation strings below are what ``ansible-doc`` shows.
"""

from __future__ import annotations

import re
import time
from typing import Any

try:
    import botocore.exceptions
    import botocore.parsers
except ImportError:  # pragma: no cover - AnsibleAWSModule reports the missing library
    pass

try:
    from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
except ImportError:  # pragma: no cover - the tests import the logic without Ansible
    AnsibleAWSModule = None

DOCUMENTATION = r"""
---
module: ec2_eip_reverse_dns
short_description: Set or remove the reverse DNS name of an Elastic IP address
description:
  - Reads the address's C(domain-name) attribute with EC2 C(DescribeAddressesAttribute)
    and changes it with C(ModifyAddressAttribute) (O(state=present)) or
    C(ResetAddressAttribute) (O(state=absent)) only when it differs.
  - EC2 applies a change asynchronously. While an update to the requested name is
    C(PENDING), the module reports no change, so a second run is idempotent.
  - EC2 accepts a name only when a forward (A) record of that name already resolves to
    the address; publish the A record first (Route53), then call this module.
  - The C(domain_name) option of M(amazon.aws.ec2_eip) reads the same attribute, but it
    fails when the address has no PTR record yet (it reads C(PtrRecord) unconditionally),
    counts a pending update as not done (so every run until EC2 finishes changes again)
    and always reports a change in check mode. This module does neither.
  - Against an emulator (O(endpoint_url) set) that does not implement
    C(ModifyAddressAttribute)/C(ResetAddressAttribute) (moto 5 does not), the task is
    reported as skipped with a message saying so; nothing is pretended, the result's
    RV(applied) is false. Against AWS itself every error fails the task.
options:
  allocation_id:
    description: Allocation ID of the Elastic IP (C(eipalloc-...)).
    type: str
  public_ip:
    description: The Elastic IP address itself; used when O(allocation_id) is not given.
    type: str
  domain_name:
    description:
      - The host name the address should resolve back to, e.g. C(mx1.example.com).
      - Required when O(state=present). A final dot is ignored.
    type: str
  state:
    description:
      - V(present) sets O(domain_name); V(absent) returns the address to EC2's default
        name (C(ec2-a-b-c-d.<region>.compute.amazonaws.com)).
    type: str
    choices: [present, absent]
    default: present
  wait:
    description: Wait until EC2 reports the update as done (or failed).
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait when O(wait=true).
    type: int
    default: 300
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - Supports check mode; only C(DescribeAddresses) and C(DescribeAddressesAttribute) are
    called then.
  - IAM actions used - C(ec2:DescribeAddresses), C(ec2:DescribeAddressesAttribute),
    C(ec2:ModifyAddressAttribute), C(ec2:ResetAddressAttribute).
author:
  - mailops
"""

EXAMPLES = r"""
- name: Point the address of mx1 back at its name
  ec2_eip_reverse_dns:
    allocation_id: eipalloc-0123456789abcdef0
    domain_name: mx1.example.com
    region: us-east-1

- name: Same, by address, and wait until EC2 has applied it
  ec2_eip_reverse_dns:
    public_ip: 198.51.100.10
    domain_name: mx1.example.com
    wait: true

- name: Give the address back its default EC2 name (before releasing it)
  ec2_eip_reverse_dns:
    allocation_id: eipalloc-0123456789abcdef0
    state: absent

- name: Against a local emulator
  ec2_eip_reverse_dns:
    allocation_id: "{{ eip.allocation_id }}"
    domain_name: mail1.example.com
    endpoint_url: http://127.0.0.1:5000
"""

RETURN = r"""
allocation_id:
  description: Allocation ID of the address.
  returned: always
  type: str
  sample: eipalloc-0123456789abcdef0
public_ip:
  description: The address.
  returned: always
  type: str
  sample: 198.51.100.10
domain_name:
  description: The name asked for (without the final dot); empty for O(state=absent).
  returned: always
  type: str
  sample: mx1.example.com
ptr_record:
  description: The PTR name EC2 serves now (before the change this run asked for).
  returned: always
  type: str
  sample: ec2-198-51-100-10.compute-1.amazonaws.com.
ptr_record_update:
  description: The update EC2 is working on or finished last, if any.
  returned: when EC2 reports one
  type: dict
  contains:
    value:
      description: The name being set.
      type: str
    status:
      description: C(PENDING), C(SUCCESSFUL) or C(FAILED).
      type: str
    reason:
      description: Why an update failed.
      type: str
pending:
  description: EC2 is still applying an update to the requested name.
  returned: always
  type: bool
applied:
  description: The requested state is in force or on its way (false when skipped).
  returned: always
  type: bool
skipped:
  description: The endpoint does not implement the call (emulators only).
  returned: when skipped
  type: bool
msg:
  description: What was done, or why nothing could be.
  returned: always
  type: str
"""

ATTRIBUTE = "domain-name"
# Error codes an emulator (or a partial implementation) answers for an action it lacks.
_NOT_IMPLEMENTED_CODES = frozenset(
    {"NotImplemented", "NotImplementedError", "InvalidAction", "UnsupportedOperation"}
)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DEFAULT_PTR = re.compile(r"\.amazonaws\.com\.?$")
POLL_SECONDS = 5.0


class ReverseDnsError(Exception):
    """A request that cannot succeed (bad input, unknown address, EC2 refused it)."""


class Unsupported(Exception):
    """The emulator at the endpoint does not implement an address-attribute call."""


def normalise_name(name: str) -> str:
    """A host name in lower case without the final dot; refuse anything else."""
    n = (name or "").strip().rstrip(".").lower()
    if not n or len(n) > 253 or "." not in n or not all(_LABEL.match(p) for p in n.split(".")):
        raise ReverseDnsError(f"domain_name {name!r} is not a fully qualified host name")
    return n


def _bare(name: str | None) -> str:
    return (name or "").rstrip(".").lower()


def is_default_ptr(name: str | None) -> bool:
    """EC2's own name for an address (or none at all), as opposed to one we set."""
    return not name or bool(_DEFAULT_PTR.search(name))


def unsupported_reason(exc: BaseException, action: str, endpoint_url: str | None) -> str | None:
    """Why exc means "the emulator lacks this action", or None when it means anything else.

    Only with an endpoint_url: against AWS an error is always an error.
    """
    if not endpoint_url:
        return None
    where = f"the endpoint {endpoint_url}"
    if isinstance(exc, NotImplementedError):  # moto in-process (mock_aws)
        return f"{where} does not implement {action} ({exc})"
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if err.get("Code") in _NOT_IMPLEMENTED_CODES or status == 501:
            return f"{where} does not implement {action} ({err.get('Code')}: {err.get('Message')})"
        return None
    if isinstance(exc, botocore.parsers.ResponseParserError) and "500" in str(exc):
        # moto_server answers an action it has no handler for with Flask's HTML error page.
        return (
            f"{where} answered {action} with HTTP 500 and an HTML page instead of an EC2 "
            "response, which is how moto's server reports an action it does not implement"
        )
    return None


def find_address(client: Any, allocation_id: str | None, public_ip: str | None) -> dict[str, Any]:
    try:
        if allocation_id:
            found = client.describe_addresses(AllocationIds=[allocation_id])["Addresses"]
        else:
            found = client.describe_addresses(PublicIps=[public_ip])["Addresses"]
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("InvalidAllocationID.NotFound", "InvalidAddress.NotFound"):
            raise ReverseDnsError(f"no Elastic IP {allocation_id or public_ip}") from None
        raise
    if not found:
        raise ReverseDnsError(f"no Elastic IP {allocation_id or public_ip}")
    address: dict[str, Any] = found[0]
    if not address.get("AllocationId"):
        raise ReverseDnsError(
            f"{address.get('PublicIp')} has no allocation ID (an EC2-Classic address?): "
            "reverse DNS can only be set on VPC Elastic IPs"
        )
    return address


def read_attribute(client: Any, allocation_id: str, endpoint_url: str | None) -> dict[str, Any]:
    try:
        got = client.describe_addresses_attribute(
            AllocationIds=[allocation_id], Attribute=ATTRIBUTE
        ).get("Addresses", [])
    except Exception as exc:
        reason = unsupported_reason(exc, "DescribeAddressesAttribute", endpoint_url)
        if reason:
            raise Unsupported(reason) from None
        raise
    for item in got:
        if item.get("AllocationId") == allocation_id:
            return dict(item)
    return {"AllocationId": allocation_id}


def _update(attr: dict[str, Any]) -> dict[str, str]:
    upd = attr.get("PtrRecordUpdate") or {}
    return {
        "value": upd.get("Value", ""),
        "status": upd.get("Status", ""),
        "reason": upd.get("Reason", ""),
    }


def decide(attr: dict[str, Any], state: str, want: str) -> tuple[bool, bool, str]:
    """(change needed, already pending, note) for the attribute as EC2 reports it."""
    current = _bare(attr.get("PtrRecord"))
    upd = _update(attr)
    pending = upd["status"].upper() == "PENDING"
    if state == "present":
        if pending:
            if _bare(upd["value"]) == want:
                return False, True, f"EC2 is already setting the name to {want}"
            return True, False, f"an update to {upd['value']!r} is pending; asking for {want}"
        if current == want:
            return False, False, f"reverse DNS is {want}"
        if upd["status"].upper() == "FAILED" and _bare(upd["value"]) == want:
            return True, False, f"the last update to {want} failed ({upd['reason']}); trying again"
        return True, False, f"reverse DNS is {current or 'unset'}; setting {want}"
    # absent: back to EC2's own name
    if pending:
        if is_default_ptr(upd["value"]):
            return False, True, "EC2 is already resetting the name"
        return True, False, f"an update to {upd['value']!r} is pending; resetting"
    if is_default_ptr(attr.get("PtrRecord")):
        return False, False, "reverse DNS is EC2's default"
    return True, False, f"reverse DNS is {current}; resetting to EC2's default"


def wait_done(
    client: Any, allocation_id: str, endpoint_url: str | None, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        attr = read_attribute(client, allocation_id, endpoint_url)
        status = _update(attr)["status"].upper()
        if status == "FAILED":
            raise ReverseDnsError(
                f"EC2 could not set reverse DNS of {allocation_id}: {_update(attr)['reason']}"
            )
        if status != "PENDING":
            return attr
        if time.monotonic() >= deadline:
            raise ReverseDnsError(
                f"reverse DNS update of {allocation_id} still pending after {timeout:.0f} s"
            )
        time.sleep(POLL_SECONDS)


def ensure(
    client: Any,
    *,
    allocation_id: str | None = None,
    public_ip: str | None = None,
    domain_name: str | None = None,
    state: str = "present",
    check_mode: bool = False,
    endpoint_url: str | None = None,
    wait: bool = False,
    wait_timeout: float = 300,
) -> dict[str, Any]:
    """Bring the address's reverse DNS to the requested state; the module's result."""
    if state not in ("present", "absent"):
        raise ReverseDnsError(f"state must be present or absent, not {state!r}")
    if not allocation_id and not public_ip:
        raise ReverseDnsError("one of allocation_id or public_ip is required")
    want = normalise_name(domain_name or "") if state == "present" else ""
    address = find_address(client, allocation_id, public_ip)
    alloc = address["AllocationId"]
    result: dict[str, Any] = {
        "changed": False,
        "allocation_id": alloc,
        "public_ip": address.get("PublicIp", ""),
        "domain_name": want,
        "pending": False,
        "applied": False,
    }
    try:
        attr = read_attribute(client, alloc, endpoint_url)
    except Unsupported as exc:
        return _skipped(result, str(exc), want)
    result["ptr_record"] = attr.get("PtrRecord", "")
    if attr.get("PtrRecordUpdate"):
        result["ptr_record_update"] = _update(attr)
    change, pending, note = decide(attr, state, want)
    result["pending"] = pending
    if not change:
        result["applied"] = True
        result["msg"] = note
        if wait and pending and not check_mode:
            done = wait_done(client, alloc, endpoint_url, wait_timeout)
            result["ptr_record"] = done.get("PtrRecord", "")
            result["ptr_record_update"] = _update(done)
            result["pending"] = False
        return result
    result["changed"] = True
    if check_mode:
        result["msg"] = note + " (check mode: nothing sent)"
        return result
    action = "ModifyAddressAttribute" if state == "present" else "ResetAddressAttribute"
    try:
        if state == "present":
            answer = client.modify_address_attribute(AllocationId=alloc, DomainName=want)
        else:
            answer = client.reset_address_attribute(AllocationId=alloc, Attribute=ATTRIBUTE)
    except Exception as exc:
        reason = unsupported_reason(exc, action, endpoint_url)
        if reason:
            result["changed"] = False
            return _skipped(result, reason, want)
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            hint = ""
            if state == "present":
                hint = (
                    f" (EC2 sets a PTR name only when {want} already has an A record "
                    f"resolving to {result['public_ip']})"
                )
            raise ReverseDnsError(
                f"{action} of {alloc} failed: {err.get('Code')}: {err.get('Message')}{hint}"
            ) from None
        raise
    new = answer.get("Address", {}) if isinstance(answer, dict) else {}
    if new.get("PtrRecordUpdate"):
        result["ptr_record_update"] = _update(new)
        result["pending"] = _update(new)["status"].upper() == "PENDING"
    result["applied"] = True
    result["msg"] = note
    if wait:
        done = wait_done(client, alloc, endpoint_url, wait_timeout)
        result["ptr_record"] = done.get("PtrRecord", "")
        result["ptr_record_update"] = _update(done)
        result["pending"] = False
    return result


def _skipped(result: dict[str, Any], reason: str, want: str) -> dict[str, Any]:
    target = f"to {want}" if want else "to EC2's default"
    result.update(
        skipped=True,
        changed=False,
        applied=False,
        msg=f"reverse DNS of {result['public_ip']} NOT set {target}: {reason}. "
        "Against AWS the same task sets it.",
    )
    return result


def main() -> None:
    module = AnsibleAWSModule(
        argument_spec={
            "allocation_id": {"type": "str"},
            "public_ip": {"type": "str"},
            "domain_name": {"type": "str"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "wait": {"type": "bool", "default": False},
            "wait_timeout": {"type": "int", "default": 300},
        },
        required_one_of=[["allocation_id", "public_ip"]],
        mutually_exclusive=[["allocation_id", "public_ip"]],
        required_if=[["state", "present", ["domain_name"]]],
        supports_check_mode=True,
    )
    endpoint_url = module.params.get("endpoint_url")
    client = module.client("ec2")
    try:
        result = ensure(
            client,
            allocation_id=module.params["allocation_id"],
            public_ip=module.params["public_ip"],
            domain_name=module.params["domain_name"],
            state=module.params["state"],
            check_mode=module.check_mode,
            endpoint_url=endpoint_url,
            wait=module.params["wait"],
            wait_timeout=module.params["wait_timeout"],
        )
    except ReverseDnsError as exc:
        module.fail_json(msg=str(exc))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        module.fail_json_aws(exc, msg="EC2 refused the request")
    except botocore.parsers.ResponseParserError as exc:
        module.fail_json(msg=f"EC2's answer could not be read: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
