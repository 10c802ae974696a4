"""The HTTPS API as Proxmox clients use it: tickets, CSRF, errors, proxying, proxmoxer."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import uuid

import pytest
import requests
import urllib3

from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()


def base(cluster: Cluster, node: str = "n1") -> str:
    return f"https://{cluster[node].address}:8006/api2/json"


def login(cluster: Cluster, user: str = "admin@pve", password: str = PASSWORD):
    r = requests.post(base(cluster) + "/access/ticket",
                      data={"username": user, "password": password}, verify=False, timeout=10)
    return r


@pytest.fixture(scope="module")
def session(cluster: Cluster) -> requests.Session:
    r = login(cluster)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["username"] == "admin@pve" and data["clustername"] == "itest"
    s = requests.Session()
    s.verify = False
    s.trust_env = False  # a CA bundle in the environment would override verify=False
    s.cookies.set("PVEAuthCookie", data["ticket"])
    s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
    return s


def test_ticket_login_and_failures(cluster: Cluster) -> None:
    r = login(cluster, password="wrong-password")
    assert r.status_code == 401 and r.reason == "authentication failure"
    assert r.json()["data"] is None and "errors" not in r.json()
    assert login(cluster, user="nobody@pve").status_code == 401
    assert login(cluster, user="admin@nosuchrealm").status_code == 401
    ticket = login(cluster).json()["data"]["ticket"]
    assert ticket.startswith("PVE:admin@pve:") and "::" in ticket
    renewed = login(cluster, password=ticket)
    assert renewed.status_code == 200 and renewed.json()["data"]["ticket"].startswith("PVE:")
    # a ticket issued by n1 is valid on n2 (the signing key is cluster-wide)
    r = requests.get(base(cluster, "n2") + "/version", cookies={"PVEAuthCookie": ticket},
                     verify=False, timeout=10)
    assert r.status_code == 200


def test_unauthenticated_is_401(cluster: Cluster) -> None:
    r = requests.get(base(cluster) + "/cluster/status", verify=False, timeout=10)
    assert r.status_code == 401 and r.reason == "No ticket"
    r = requests.get(base(cluster) + "/version", verify=False, timeout=10,
                     headers={"Authorization": "PVEAuthCookie=PVE:admin@pve:00000000::forged"})
    assert r.status_code == 401


def test_authorization_header_and_version(cluster: Cluster, session) -> None:
    ticket = session.cookies["PVEAuthCookie"]
    r = requests.get(base(cluster) + "/version", verify=False, timeout=10,
                     headers={"Authorization": f"PVEAuthCookie={ticket}"})
    data = r.json()["data"]
    assert r.status_code == 200 and data["version"].startswith("8.") and data["release"]


def test_csrf_required_on_post(cluster: Cluster, session) -> None:
    ticket = session.cookies["PVEAuthCookie"]
    r = requests.post(base(cluster) + "/cluster/config", data={"clustername": "other"},
                      cookies={"PVEAuthCookie": ticket}, verify=False, timeout=10)
    assert r.status_code == 401 and "csrf" in r.reason
    r = requests.post(base(cluster) + "/cluster/config", data={"clustername": "other"},
                      cookies={"PVEAuthCookie": ticket}, verify=False, timeout=10,
                      headers={"CSRFPreventionToken": "00000000:bogus"})
    assert r.status_code == 401


def test_bad_parameters_are_400_with_errors_and_change_nothing(cluster: Cluster,
                                                                session) -> None:
    r = session.post(base(cluster) + "/cluster/config",
                     data={"clustername": "bad name!", "bogus": "1"}, timeout=10)
    assert r.status_code == 400 and r.reason == "Parameter verification failed."
    errors = r.json()["errors"]
    assert set(errors) == {"clustername", "bogus"}
    assert "invalid cluster name" in errors["clustername"]
    assert "not defined in schema" in errors["bogus"]
    r = session.get(base(cluster) + "/cluster/log", params={"max": "0"}, timeout=10)
    assert r.status_code == 400 and "minimum value of 1" in r.json()["errors"]["max"]
    r = session.post(base(cluster) + "/cluster/config/expected", data={"expected": "x"},
                     timeout=10)
    assert r.status_code == 400 and "integer" in r.json()["errors"]["expected"]
    # a valid request that the node refuses: 500 with the message as reason phrase
    r = session.post(base(cluster) + "/cluster/config", data={"clustername": "other"},
                     timeout=10)
    assert r.status_code == 500 and r.reason == "this node already belongs to cluster 'itest'"
    assert r.json()["message"] == "this node already belongs to cluster 'itest'\n"
    status = session.get(base(cluster) + "/cluster/status", timeout=10).json()["data"]
    assert status[0]["name"] == "itest"


def test_unknown_path_is_501(cluster: Cluster, session) -> None:
    r = session.get(base(cluster) + "/nosuch/thing", timeout=10)
    assert r.status_code == 501 and r.reason == "Method 'GET /nosuch/thing' not implemented"
    r = session.put(base(cluster) + "/version", timeout=10)
    assert r.status_code == 501


def test_cluster_status_shape(cluster: Cluster, session) -> None:
    data = session.get(base(cluster) + "/cluster/status", timeout=10).json()["data"]
    head = data[0]
    assert head["type"] == "cluster" and head["id"] == "cluster" and head["quorate"] == 1
    assert isinstance(head["version"], int) and head["nodes"] == 2
    nodes = [e for e in data if e["type"] == "node"]
    assert {n["name"] for n in nodes} == {"n1", "n2"}
    for n in nodes:
        assert n["id"] == f"node/{n['name']}" and n["online"] == 1
        assert isinstance(n["nodeid"], int) and n["ip"]
    assert [n["local"] for n in nodes if n["name"] == "n1"] == [1]


def test_nodes_and_proxying(cluster: Cluster, session) -> None:
    nodes = session.get(base(cluster) + "/nodes", timeout=10).json()["data"]
    assert {n["node"] for n in nodes} == {"n1", "n2"}   # the witness hosts no guests
    for n in nodes:
        assert n["status"] == "online" and len(n["ssl_fingerprint"]) == 95
        assert isinstance(n["maxcpu"], int) and n["maxmem"] > 0
    # /nodes/n2/status asked of n1 is answered by n2
    st = session.get(base(cluster) + "/nodes/n2/status", timeout=10).json()["data"]
    assert st["memory"]["total"] > 0 and st["pveversion"].startswith("binome/")
    assert st["cpuinfo"]["cpus"] >= 1 and len(st["loadavg"]) == 3
    # n2's join task, seen through n1
    r = session.get(base(cluster) + "/nodes/n2/tasks", params={"source": "all"}, timeout=10)
    body = r.json()
    assert body["total"] >= 1
    join = next(t for t in body["data"] if t["type"] == "clusterjoin")
    assert join["node"] == "n2" and join["status"] == "OK"
    upid = join["upid"]
    assert upid.startswith("UPID:n2:") and upid.endswith(":") and len(upid.split(":")) == 9
    st = session.get(base(cluster) + f"/nodes/n2/tasks/{upid}/status", timeout=10)
    assert st.json()["data"]["status"] == "stopped"
    assert st.json()["data"]["exitstatus"] == "OK"
    log = session.get(base(cluster) + f"/nodes/n2/tasks/{upid}/log", timeout=10).json()
    assert log["data"][-1]["t"] == "TASK OK" and log["total"] == len(log["data"])
    assert log["data"][0]["n"] == 1
    r = session.get(base(cluster) + "/nodes/n2/tasks/NOT-A-UPID/status", timeout=10)
    assert r.status_code == 400 and "upid" in r.json()["errors"]
    r = session.get(base(cluster) + "/nodes/nosuch/status", timeout=10)
    assert r.status_code == 500 and "no such cluster node" in r.reason


def test_openapi_document(cluster: Cluster) -> None:
    r = requests.get(f"https://{cluster['n1'].address}:8006/api2/openapi.json", verify=False,
                     timeout=10)
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/api2/json/access/ticket"]
    assert "get" in doc["paths"]["/api2/json/nodes/{node}/tasks/{upid}/status"]


def test_proxmoxer_client(cluster: Cluster) -> None:
    from proxmoxer import ProxmoxAPI, ResourceException
    from proxmoxer.tools import Tasks

    px = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                    verify_ssl=False, timeout=10)
    assert px.version.get()["version"].startswith("8.")
    assert any(e["type"] == "cluster" for e in px.cluster.status.get())
    assert {n["node"] for n in px.nodes.get()} == {"n1", "n2"}
    # filtered: the shared cluster's other tests may have pushed it past the first 50
    tasks = px.nodes("n1").tasks.get(source="all", typefilter="clustercreate")
    create = next(t for t in tasks if t["type"] == "clustercreate")
    decoded = Tasks.decode_upid(create["upid"])
    assert decoded["node"] == "n1" and decoded["type"] == "clustercreate"
    status = Tasks.blocking_status(px, create["upid"], timeout=5)
    assert status["status"] == "stopped" and status["exitstatus"] == "OK"
    with pytest.raises(ResourceException) as excinfo:
        px.cluster.config.post(clustername="again")
    assert excinfo.value.status_code == 500
    assert "already belongs to cluster" in excinfo.value.content


@pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd not available")
def test_pam_authentication_real_path() -> None:
    """The pam realm goes through the system's PAM stack with a real account."""
    from binome.api import auth

    name = f"bnt{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{secret}\n", text=True, check=True)
        assert asyncio.run(auth.pam_authenticate(name, secret)) is True
        assert asyncio.run(auth.pam_authenticate(name, secret + "x")) is False
    finally:
        subprocess.run(["userdel", name], check=False)


def test_pam_realm_refuses_wrong_root_password(cluster: Cluster) -> None:
    r = login(cluster, user="root@pam", password=uuid.uuid4().hex)
    assert r.status_code == 401


def test_client_bootstrap_endpoints(cluster: Cluster, session) -> None:
    """What Telmate and bpg call at start-up: permissions, users, pools."""
    perms = session.get(base(cluster) + "/access/permissions",
                        params={"userid": "admin@pve", "path": "/"}, timeout=10).json()["data"]
    for priv in ("VM.Allocate", "VM.Audit", "VM.Clone", "VM.PowerMgmt", "Sys.Audit",
                 "Sys.Modify", "Datastore.AllocateSpace", "Datastore.Audit"):
        assert perms["/"][priv] == 1
    users = session.get(base(cluster) + "/access/users", params={"full": 1},
                        timeout=10).json()["data"]
    assert {"root@pam", "admin@pve"} <= {u["userid"] for u in users}
    assert all("password" not in u for u in users)
    assert session.get(base(cluster) + "/pools", timeout=10).json()["data"] == []


def test_storage_definitions_content_and_uploads(cluster: Cluster, tmp_path) -> None:
    """PVE's storage API through proxmoxer and the CLI: a definition read, changed (digest,
    delete=), refused while a VM names a volume on it, then removed; a disk allocated and
    refused for deletion while its VM exists; an ISO uploaded (streamed, proxied to n2)
    and downloaded from a local HTTP server with checksums; bad input changes nothing."""
    import hashlib
    import http.server
    import threading

    from proxmoxer import ProxmoxAPI, ResourceException
    from proxmoxer.tools import Tasks

    sid = f"st{uuid.uuid4().hex[:6]}"
    vmid = 800 + int(sid[2:], 16) % 90
    root = tmp_path / sid
    px = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                    verify_ssl=False, timeout=30)

    def fails(call, status: int, text: str) -> ResourceException:
        with pytest.raises(ResourceException) as info:
            call()
        assert info.value.status_code == status and text in str(info.value), info.value
        return info.value

    def task(upid: str) -> dict:
        return Tasks.blocking_status(px, upid, timeout=30)

    px.storage.post(storage=sid, type="dir", path=str(root), content="images,iso")
    try:
        cfg = px.storage(sid).get()
        assert (cfg["type"], cfg["content"], cfg["path"]) == ("dir", "images,iso", str(root))
        px.storage(sid).put(content="images,iso,snippets", digest=cfg["digest"])
        fails(lambda: px.storage(sid).put(disable=1, digest=cfg["digest"]), 500,
              "update storage failed: detected modified configuration")
        fails(lambda: px.storage(sid).put(delete="path"), 500,
              "update storage failed: unable to delete fixed option 'path'")
        err = fails(lambda: px.storage(sid).put(nodes="nosuchnode"), 400, "nodes")
        assert "no such cluster node" in str(err.errors)
        cluster["n1"].cli("storage", "set", sid, "--nodes", "n1,n2")
        assert px.storage(sid).get()["content"] == "images,iso,snippets"
        assert px.storage(sid).get()["nodes"] == "n1,n2"
        cluster["n1"].cli("storage", "set", sid, "--delete", "nodes")
        assert "nodes" not in px.storage(sid).get()
        # the CLI's upload (a cloud-init snippet) and free
        snippet = tmp_path / "user.yaml"
        snippet.write_text("#cloud-config\nhostname: st\n")
        cluster["n1"].cli("storage", "upload", sid, str(snippet), "--content", "snippets")
        assert (root / "snippets" / "user.yaml").read_text() == snippet.read_text()
        cluster["n1"].cli("storage", "free", sid, f"{sid}:snippets/user.yaml")
        assert not (root / "snippets" / "user.yaml").exists()

        # a disk allocated for a VM; its deletion is refused while the VM exists
        volid = px.nodes("n1").storage(sid).content.post(
            vmid=vmid, filename=f"vm-{vmid}-disk-0.qcow2", size="1M")
        assert volid == f"{sid}:{vmid}/vm-{vmid}-disk-0.qcow2"
        fails(lambda: px.nodes("n1").storage(sid).content.post(
            vmid=vmid, filename="mine", size="1M"), 400, "filename")
        listed = px.nodes("n1").storage(sid).content.get(content="images")
        assert [(v["volid"], v["size"]) for v in listed] == [(volid, 1 << 20)]
        task(px.nodes("n1").qemu.post(vmid=vmid, memory=64, virtio0=volid))
        try:
            fails(lambda: px.nodes("n1").storage(sid).content(volid).delete(), 500,
                  f"Cannot remove image, a guest with VMID '{vmid}' exists!")
            fails(lambda: px.storage(sid).delete(), 500,
                  f"delete storage failed: can't remove storage - storage is used by VM "
                  f"{vmid}")
        finally:
            task(px.nodes("n1").qemu(vmid).delete())
        assert px.nodes("n1").storage(sid).content.get(content="images") == []

        # an ISO upload, through n1 to n2 (relayed as it comes), with its checksum
        iso = tmp_path / "boot disk.iso"
        iso.write_bytes(os.urandom(3 << 20))
        digest = hashlib.sha256(iso.read_bytes()).hexdigest()
        with open(iso, "rb") as f:
            upid = px.nodes("n2").storage(sid).upload.post(
                content="iso", checksum=digest, **{"checksum-algorithm": "sha256"},
                filename=f)
        assert upid.split(":")[1] == "n2" and task(upid)["exitstatus"] == "OK"
        log = "\n".join(e["t"] for e in px.nodes("n2").tasks(upid).log.get())
        assert "OK, checksum verified" in log, log
        assert (root / "template" / "iso" / "boot_disk.iso").read_bytes() == iso.read_bytes()
        # a wrong checksum: the task fails and nothing is left
        other = tmp_path / "other.iso"
        other.write_bytes(iso.read_bytes())
        with open(other, "rb") as f:
            upid = px.nodes("n1").storage(sid).upload.post(
                content="iso", checksum="0" * 64, **{"checksum-algorithm": "sha256"},
                filename=f)
        status = task(upid)
        assert status["exitstatus"] == f"checksum mismatch: got '{digest}' != expect " \
                                       f"'{'0' * 64}'", status
        assert sorted(p.name for p in (root / "template" / "iso").iterdir()) == \
            ["boot_disk.iso"]
        (tmp_path / "x.exe").write_bytes(b"MZ")
        with open(tmp_path / "x.exe", "rb") as f:     # bad input: PVE's 400, nothing written
            fails(lambda: px.nodes("n1").storage(sid).upload.post(
                content="iso", filename=f), 400, "filename")

        # permissions as PVE's: PVEDatastoreUser allocates disks but uploads nothing;
        # PVEDatastoreAdmin uploads, but downloading from a URL also needs the network
        from tests.integration.access.client import Api
        admin = Api(cluster, "admin@pve", PASSWORD)
        user = f"stu{sid}@pve"
        admin.ok("POST", "/access/users", userid=user, password="storage-user-pw1")
        try:
            admin.ok("PUT", "/access/acl", path=f"/storage/{sid}", users=user,
                     roles="PVEDatastoreUser")
            limited = Api(cluster, user, "storage-user-pw1")
            r = limited.s.post(f"{limited.base}/nodes/n1/storage/{sid}/upload", timeout=30,
                               data={"content": "iso"},
                               files={"filename": ("denied.iso", b"x" * 100)})
            assert (r.status_code, r.reason) == (
                403, f"Permission check failed (/storage/{sid}, Datastore.AllocateTemplate)")
            assert not (root / "template" / "iso" / "denied.iso").exists()
            assert limited.ok("POST", f"/nodes/n1/storage/{sid}/content", vmid=vmid,
                              filename=f"vm-{vmid}-disk-1", size="64") == \
                f"{sid}:{vmid}/vm-{vmid}-disk-1.raw"
            r = limited.call("DELETE", f"/nodes/n1/storage/{sid}/content/"
                                       f"{sid}:{vmid}/vm-{vmid}-disk-1.raw")
            assert r.status_code == 403, r.text          # freeing needs Datastore.Allocate
            admin.ok("PUT", "/access/acl", path=f"/storage/{sid}", users=user,
                     roles="PVEDatastoreAdmin")
            r = limited.call("POST", f"/nodes/n1/storage/{sid}/download-url",
                             url="http://127.0.0.1:9/x.iso", content="iso", filename="x.iso")
            assert (r.status_code, r.reason) == (
                403, "Permission check failed (/nodes/n1, Sys.AccessNetwork)"), r.text
        finally:
            admin.call("DELETE", f"/access/users/{user}")
        task(px.nodes("n1").storage(sid).content(f"{sid}:{vmid}/vm-{vmid}-disk-1.raw")
             .delete())

        # download-url and query-url-metadata from a local HTTP server
        served = tmp_path / "www"
        served.mkdir()
        (served / "tiny.iso").write_bytes(b"tiny" * 1000)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                    directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/tiny.iso"
            meta = px.nodes("n1")("query-url-metadata").get(url=url)
            assert meta["filename"] == "tiny.iso" and meta["size"] == 4000
            md5 = hashlib.md5(b"tiny" * 1000).hexdigest()
            upid = px.nodes("n1").storage(sid)("download-url").post(
                url=url, content="iso", filename="tiny.iso", checksum=md5,
                **{"checksum-algorithm": "md5"})
            assert task(upid)["exitstatus"] == "OK"
            upid = px.nodes("n1").storage(sid)("download-url").post(
                url=url + ".missing", content="iso", filename="gone.iso")
            assert "404" in task(upid)["exitstatus"]
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
        isos = {v["volid"] for v in px.nodes("n1").storage(sid).content.get(content="iso")}
        assert isos == {f"{sid}:iso/boot_disk.iso", f"{sid}:iso/tiny.iso"}
        task(px.nodes("n1").storage(sid).content(f"{sid}:iso/tiny.iso").delete())
        assert not (root / "template" / "iso" / "tiny.iso").exists()
    finally:
        if sid in {s["storage"] for s in px.storage.get()}:
            cluster["n1"].cli("storage", "remove", sid)
    assert sid not in {s["storage"] for s in px.storage.get()}
