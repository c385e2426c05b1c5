"""moto as AWS STS and IAM for the IAM scenario of compat/run (the way tests/python does it).

    iam.py serve STATE_DIR PORT      run moto_server on 127.0.0.1:PORT in this process (compat/ctl
                                     starts it; STATE_DIR only marks the process as this run's)
    iam.py provision PORT OUT.json   create a role, a user allowed to assume it and the user's
                                     key, assume the role, check that moto verifies signatures,
                                     and write the role's ARN and temporary credentials to OUT.json
                                     (mode 600)

moto is started with INITIAL_NO_AUTH_ACTION_COUNT = the number of unauthenticated set-up calls
`provision` makes (tests/python/moto_stack.py); every request after those must carry a valid
SigV4 signature, which `provision` proves with a wrong secret (403) before writing anything. The
gateway then verifies each MONGODB-AWS login with this moto as its STS endpoint. moto gets none
of the caller's AWS_* or MOTO_* settings.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/python"))

import moto_stack  # noqa: E402  (tests/python: standalone, standard library + boto3)

ROLE_NAME = "compat-fn-role"
USER_NAME = "compat-deployer"


def serve(state_dir: str, port: str) -> None:
    for k in list(os.environ):
        if k.startswith(("AWS_", "MOTO_")):
            del os.environ[k]
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(moto_stack.SETUP_CALLS)
    from moto.server import main

    main(["-H", "127.0.0.1", "-p", port])


def provision(port: str, out: str) -> None:
    # The process is compat/ctl's; MotoStack only needs its address for the set-up calls.
    stack = moto_stack.MotoStack(process=None, port=int(port), log_path=Path(out).with_suffix(".log"),
                                 role_name=ROLE_NAME, user_name=USER_NAME)
    moto_stack._set_up(stack)  # the calls moto_stack.start_moto_stack makes after starting moto
    c = stack.role_credentials
    data = {"role_arn": stack.role_arn, "access_key_id": c.access_key_id,
            "secret_access_key": c.secret_access_key, "session_token": c.session_token}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    print(f"moto: {stack.role_arn} assumable, signatures enforced")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "provision":
        provision(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
