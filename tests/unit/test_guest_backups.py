"""The vzdump job's pure helpers: PVE's size and duration renderings, notes templates."""

from binome.guest.backups import expand_notes, human_duration, human_size


def test_sizes_and_durations_read_like_vzdump() -> None:
    assert human_size(512) == "512 B"
    assert human_size(64 << 20) == "64.0 MiB"
    assert human_size(int(1.5 * (1 << 30))) == "1.5 GiB"
    assert human_duration(12) == "00:00:12"
    assert human_duration(3 * 3600 + 61) == "03:01:01"


def test_notes_template_variables() -> None:
    text = expand_notes("{{guestname}} ({{vmid}}) on {{node}}/{{cluster}}\\nnext {{x}}",
                        vmid=100, name="web", node="n1", cluster="c")
    assert text == "web (100) on n1/c\nnext {{x}}"
