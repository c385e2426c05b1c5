"""Self-test of moto_stack.py: moto as IAM and STS with signatures and policies enforced, set up
as a Lambda function's identity (a role assumed by a user). The MONGODB-AWS tests build on
exactly these guarantees, so they are checked here on their own."""

from __future__ import annotations

import dataclasses

import pytest
from botocore.exceptions import ClientError

from moto_stack import ACCOUNT_ID, AwsCredentials, start_moto_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_moto_stack(tmp_path_factory.mktemp("moto-stack"))
    yield s
    s.stop()


def status_of(fn) -> int:
    with pytest.raises(ClientError) as e:
        fn()
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_role_credentials_are_temporary_and_name_the_role(stack):
    creds = stack.role_credentials
    assert creds.access_key_id.startswith("ASIA") and creds.session_token
    assert set(creds.env()) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert stack.caller_arn(creds).startswith(f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{stack.role_name}/")
    assert stack.caller_arn(stack.user_credentials) == stack.user_arn
    # Each AssumeRole mints new credentials for the same role.
    again = stack.assume_role("second-session")
    assert again.access_key_id != creds.access_key_id
    assert stack.caller_arn(again).endswith(f"assumed-role/{stack.role_name}/second-session")


def test_signatures_are_checked(stack):
    creds = stack.role_credentials
    last = creds.secret_access_key[-1]
    wrong_secret = dataclasses.replace(creds, secret_access_key=creds.secret_access_key[:-1] + ("y" if last == "x" else "x"))
    no_token = dataclasses.replace(creds, session_token=None)
    tail4 = "AAAA" if creds.session_token[-4:] != "AAAA" else "BBBB"
    wrong_token = dataclasses.replace(creds, session_token=creds.session_token[:-4] + tail4)
    unknown_key = AwsCredentials("ASIAUNKNOWNKEY000000", creds.secret_access_key, creds.session_token)
    for bad in (wrong_secret, no_token, wrong_token, unknown_key):
        assert status_of(lambda: stack.caller_arn(bad)) == 403, bad
    assert stack.enforcing()


def test_policies_are_checked(stack):
    """The user may assume its role and nothing else; the role's own credentials may not
    create IAM users."""
    other = f"arn:aws:iam::{ACCOUNT_ID}:role/not-trusting-anyone"
    assert status_of(lambda: stack.assume_role("denied-session", role_arn=other)) == 403
    iam = stack.client("iam", stack.role_credentials)
    assert status_of(lambda: iam.create_user(UserName="intruder")) == 403


def test_credentials_never_show_in_reprs(stack):
    for creds in (stack.role_credentials, stack.user_credentials):
        text = repr(creds) + repr(stack)
        for secret in creds.secrets():
            assert secret not in text
