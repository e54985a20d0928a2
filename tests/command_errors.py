"""How a command refuses a user error (nemo_nvembed/checks/errors.py): exit 2, one ``error:`` line on stderr."""
from __future__ import annotations

import pytest


def refused(capsys, main, argv: list[str]) -> str:
    """Run a command's `main(argv)`; it must refuse as above; -> the message after ``error: ``."""
    capsys.readouterr()  # drop what came before
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):].rstrip("\n")
