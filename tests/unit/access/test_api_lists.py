"""The API's parsing of PVE's list parameters (users, groups, roles, tokens)."""

from binome.api.methods.access_users import split_list


def test_split_list_accepts_pve_separators() -> None:
    assert split_list("a,b;c d") == ["a", "b", "c", "d"]
    assert split_list(",,a,,") == ["a"]
    assert split_list("") == [] and split_list(None) == []
