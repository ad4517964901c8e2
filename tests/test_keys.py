import os
import stat

import pytest

from watermark.errors import KeyFileError
from watermark.keys import SiteKey, create_key, default_key_path, load_key, load_or_create_key


def test_create_load_and_permissions(tmp_path):
    path = tmp_path / "sub" / "site.key"
    key, created = load_or_create_key(path)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = load_or_create_key(path)
    assert not created and again.secret == key.secret
    assert load_key(path).fingerprint == key.fingerprint
    assert key.secret.hex() not in repr(key)


def test_never_overwritten(tmp_path):
    path = tmp_path / "site.key"
    create_key(path)
    with pytest.raises(KeyFileError, match="never overwritten"):
        create_key(path)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(KeyFileError, match="no site key"):
        load_key(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match=str(bad)):
        load_key(bad)


def test_env_overrides_default(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKTRACE_KEY", str(tmp_path / "k"))
    assert default_key_path() == tmp_path / "k"


def test_permutation_round_trip_and_keying():
    a, b = SiteKey(bytes(32)), SiteKey(bytes([1]) * 32)
    block = bytes(range(6))
    assert a.permute_block(a.permute_block(block), inverse=True) == block
    assert a.permute_block(block) != b.permute_block(block)
    assert a.permute_block(block) != block


def test_scoped_keys_are_hmac_derived_and_independent():
    import hashlib
    import hmac

    key = SiteKey(bytes(range(32)))
    a, b = key.scoped("ledger-a"), key.scoped("ledger-b")
    assert a.secret == hmac.new(key.secret, b"scope\x00ledger-a", hashlib.sha256).digest()
    assert a == key.scoped("ledger-a")  # deterministic
    assert len({key.fingerprint, a.fingerprint, b.fingerprint}) == 3
    assert a.permute_block(bytes(6)) != b.permute_block(bytes(6))
    with pytest.raises(ValueError):
        key.scoped("")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_key_others_can_read_is_used_with_a_warning(tmp_path):
    path = tmp_path / "site.key"
    key = create_key(path)
    os.chmod(path, 0o644)
    with pytest.warns(UserWarning, match=r"site\.key is readable by others \(mode 0644\); chmod 600 it"):
        assert load_key(path).secret == key.secret
    os.chmod(path, 0o600)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_key(path)  # no warning for a private key


def test_a_binary_file_is_not_a_key(tmp_path):
    path = tmp_path / "site.key"
    path.write_bytes(bytes(range(128, 256)))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"site.key: not a leaktrace site key .*binary"):
        load_key(path)


def test_a_key_names_its_file_but_is_equal_by_its_secret(tmp_path):
    path = tmp_path / "site.key"
    key = create_key(path)
    loaded = load_key(path)
    assert key.path == loaded.path == path
    assert loaded == SiteKey(key.secret) and hash(loaded) == hash(SiteKey(key.secret))
    assert key.secret.hex() not in repr(loaded)
    assert key.scoped("ledger").path is None
