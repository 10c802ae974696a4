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


def test_qemu_instance_names_one_process(tmp_path) -> None:
    import os

    from binome.guest.backups import qemu_instance

    pidfile = tmp_path / "100.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    first = qemu_instance(pidfile)
    assert first == qemu_instance(pidfile) and f":{os.getpid()}:" in first
    pidfile.write_text("not a pid")
    gone = qemu_instance(pidfile)
    assert gone.startswith("unknown-") and gone != qemu_instance(pidfile)


def test_previous_backup_reads_the_newest_backup_and_its_record(tmp_path) -> None:
    from binome.backup.dumpstore import DumpStore
    from binome.backup.incremental import RECORD_FILE, BitmapRecord
    from binome.guest.backups import previous_backup

    store = DumpStore(tmp_path, "bk")
    assert previous_backup(store, 100) is None
    record = BitmapRecord("n1", "boot:1:2", "binome-backup-x", {"virtio0": "local:1"})
    for when, extra in ((1_000, None), (2_000, record)):
        writer = store.begin("vm", "100", when)
        if extra is not None:
            writer.add_file(RECORD_FILE, extra.to_json())
        writer.commit()
    writer = store.begin("vm", "101", 3_000)   # another guest's backup
    writer.commit()
    found = previous_backup(store, 100)
    assert found is not None
    ref, previous = found
    assert ref.backup_time == 2_000 and previous.time == 2_000
    assert previous.record == record and not previous.verify_failed
    store.remove(ref)
    found = previous_backup(store, 100)
    assert found is not None and found[1].record is None and found[1].time == 1_000


def test_an_incremental_base_must_be_of_the_same_key(tmp_path) -> None:
    from binome.backup.crypt import CryptConfig
    from binome.backup.dumpstore import DumpStore
    from binome.backup.incremental import RECORD_FILE, BitmapRecord, decide
    from binome.guest.backups import previous_backup

    key, other = CryptConfig.generate()[0], CryptConfig.generate()[0]
    record = BitmapRecord("n1", "boot:1:2", "binome-backup-x", {"virtio0": "local:1"})
    store = DumpStore(tmp_path, "bk", key)
    writer = store.begin("vm", "100", 1_000)
    writer.add_file(RECORD_FILE, record.to_json())
    writer.commit()
    found = previous_backup(store, 100)
    assert found is not None and found[1].unusable is None and found[1].record == record
    for reader in (DumpStore(tmp_path, "bk", other), DumpStore(tmp_path, "bk")):
        found = previous_backup(reader, 100)
        assert found is not None and "another encryption key" in str(found[1].unusable)
        decision = decide(found[1], node="n1", instance="boot:1:2", drives=[])
        assert decision.reason is not None and "another encryption key" in decision.reason


def test_nbd_unix_uris() -> None:
    from binome.backup.nbd import parse_nbd_unix_uri

    assert parse_nbd_unix_uri("nbd+unix:///vm-100-disk-0?socket=/run/e/vm-100-disk-0.sock") \
        == ("/run/e/vm-100-disk-0.sock", "vm-100-disk-0")
    assert parse_nbd_unix_uri("nbd+unix://?socket=/s") == ("/s", "")
    for other in ("/var/lib/binome/images/100/vm-100-disk-0.raw", "nbd://host:10809/x",
                  "nbd+unix:///x", "nbd+unix://host/x?socket=/s"):
        assert parse_nbd_unix_uri(other) is None


def test_image_bitmaps_of_qcow2_v3_and_v2(tmp_path) -> None:
    """What a stopped guest's backup reads of its qcow2 images (real qemu-img): a v3
    image stores our persistent bitmaps, with their flags; a v2 one cannot."""
    import asyncio
    import shutil
    import subprocess

    import pytest

    from binome.backup.incremental import LiveBitmap
    from binome.guest.backups import _image_bitmaps

    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    v3, v2 = tmp_path / "v3.qcow2", tmp_path / "v2.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(v3), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(v2),
                    "64M"], check=True)
    assert asyncio.run(_image_bitmaps(str(v3))) == (True, ())
    subprocess.run(["qemu-img", "bitmap", "--add", "-g", str(4 << 20), str(v3),
                    "binome-backup-a"], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", "--disable", str(v3), "binome-backup-b"],
                   check=True)
    assert asyncio.run(_image_bitmaps(str(v3))) == (True, (
        LiveBitmap("binome-backup-a"), LiveBitmap("binome-backup-b", recording=False)))
    assert asyncio.run(_image_bitmaps(str(v2))) == (False, ())
