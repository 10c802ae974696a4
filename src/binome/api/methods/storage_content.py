"""Storage content changes: allocate a disk image (`POST .../content`), delete any volume
(`free_volume`, behind `DELETE .../content/{volume}`), upload (`POST .../upload`) and
download (`POST .../download-url`) ISO images, container templates and snippets, copy a
disk image (`POST .../content/{volume}`, `binome.storage.copy`), and
`GET /nodes/{node}/query-url-metadata` (PVE's Content.pm, Status.pm and Nodes.pm).

Validates, calls and shapes: volumes are the storage backends' (`binome.storage`), a
file's way into a storage is `binome.storage.upload`'s, which VMs name a volume is the
guest config repository's (`binome.guest.configs`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from binome.access.permission import ROOT_ONLY, AnyUser
from binome.api.context import UPLOAD_PART, RequestContext
from binome.api.errors import ApiError, ParamError, fail, param_error
from binome.api.methods.common import NODE
from binome.api.methods.storage import STORAGE_ID
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.errors import BinomeError
from binome.guest.configs import VmConfigs
from binome.storage import upload
from binome.storage.base import Storage, StorageError, parse_image_volname
from binome.storage.copy import copy_volume
from binome.tasks.manager import Task, TaskFailed

UPID_RETURN = {"type": "string", "description": "UPID"}
ALGORITHM = Param(optional=True, enum=upload.CHECKSUM_ALGORITHMS,
                  description="The algorithm to calculate the checksum of the file.")
CHECKSUM = Param(optional=True, max_length=128,
                 description="The expected checksum of the file.")
FILENAME = Param(max_length=255, description="The name of the file to create. Caution: "
                                             "This will be normalized!")
CONTENT = Param(enum=upload.UPLOAD_CONTENT, format="pve-storage-content",
                description="Content type (snippets: a binome extension).")
# PVE's Sys.AccessNetwork rule: probing URLs from the node reaches its (local!) network
NETWORK = ("Sys.Audit", "Sys.Modify")


async def _storage(ctx: RequestContext, storage_id: str) -> Storage:
    return await ctx.services.storages.get(storage_id)


def _guest_configs(ctx: RequestContext) -> VmConfigs:
    return VmConfigs(ctx.node, lambda: ctx.services.cluster.store)


# ------------------------------------------------------------ allocate

def parse_alloc_size(text: str) -> int:
    """PVE's Content.pm size: KiB, 'M' or 'G' suffixed; bytes."""
    m = re.fullmatch(r"(\d+)([MG]?)", text)
    if not m:
        raise param_error("size", f"unable to parse size '{text}'")
    return int(m.group(1)) * 1024 * {"": 1, "M": 1024, "G": 1024 * 1024}[m.group(2)]


def alloc_name(vmid: int, filename: str, fmt: str | None) -> tuple[str, str | None]:
    """(volume name without extension, format) for `filename` (PVE: an extension
    .raw/.qcow2/.vmdk gives the format and must agree with `format`); ParamError
    otherwise. binome's names are PVE's `vm-<vmid>-disk-<n>`."""
    m = re.fullmatch(r"(.+?)\.(raw|qcow2|vmdk)", filename)
    if m:
        if fmt and fmt != m.group(2):
            raise param_error("format", f"different storage formats ({fmt} != {m.group(2)})")
        filename, fmt = m.group(1), m.group(2)
    if not filename.startswith(f"vm-{vmid}-"):
        raise param_error("filename", f"illegal name '{filename}' - should be 'vm-{vmid}-*'")
    if not re.fullmatch(rf"vm-{vmid}-disk-\d+", filename):
        raise param_error("filename", f"illegal name '{filename}' - binome's disk names are "
                                      f"'vm-{vmid}-disk-<n>'")
    return filename, fmt


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/content", name="storage_volume_alloc",
    permission=privs("Datastore.AllocateSpace", path="/storage/{storage}"), proxyto="node",
    description="Allocate disk images.",
    parameters={"node": NODE, "storage": STORAGE_ID,
                "filename": Param(max_length=255, description="The name of the file to "
                                                              "create."),
                "vmid": Param(type="integer", minimum=100, maximum=999_999_999,
                              description="Specify owner VM"),
                "size": Param(pattern=r"\d+[MG]?",
                              description="Size in kilobyte (1024 bytes). Optional suffixes "
                                          "'M' (megabyte, 1024K) and 'G' (gigabyte, "
                                          "1024M)"),
                "format": Param(optional=True, enum=("raw", "qcow2", "subvol", "vmdk"),
                                description="Format of the image.")},
    returns={"type": "string", "description": "Volume identifier"},
    cli=CliSpec(("storage", "alloc"), positional=("storage", "vmid", "filename", "size")),
)
async def storage_volume_alloc(ctx: RequestContext, params: dict[str, Any]) -> str:
    size = parse_alloc_size(params["size"])
    if size <= 0:
        raise param_error("size", "size must be positive")
    name, fmt = alloc_name(params["vmid"], params["filename"], params.get("format"))
    storage = await _storage(ctx, params["storage"])
    if "images" not in storage.config.content:
        raise fail(f"storage '{storage.id}' does not support content-type 'images'")
    fmt = fmt or storage.formats[0]
    if fmt not in storage.formats:
        raise param_error("format", f"unsupported format '{fmt}' on storage type "
                                    f"'{storage.config.type}'")
    try:
        return await storage.alloc(params["vmid"], size, fmt, name)
    except StorageError as exc:
        raise fail(str(exc)) from None


# ------------------------------------------------------------ free

IMAGE_IN_USE = ("Cannot remove image, a guest with VMID '{vmid}' exists! You can delete "
                "the image from the guest's hardware pane")


async def free_volume(ctx: RequestContext, volid: str, storage: Storage) -> str:
    """`DELETE .../content/{volume}` of a volume that is not a backup (the caller has
    checked Datastore.Allocate): a task ('imgdel') removing it. A disk image is refused
    while its VM exists or any VM's config names it (PVE's GUI text, enforced here)."""
    volname = volid.partition(":")[2]
    try:
        storage.source(volid)                 # parses the name; the volume must exist
    except StorageError as exc:
        raise fail(str(exc)) from None
    owner = _image_owner(volname)
    if owner is not None:
        guests = _guest_configs(ctx)
        users = (await guests.volume_users()).get(volid, [])
        if users or await guests.owner(owner) is not None:
            raise fail(IMAGE_IN_USE.format(vmid=users[0] if users else owner))

    async def body(task: Task) -> None:
        try:
            await storage.free(volid)
        except StorageError as error:
            raise TaskFailed(str(error)) from None
        task.log(f"Removed volume '{volid}'")

    task_id = f"{owner}@{storage.id}" if owner is not None else storage.id
    return ctx.services.tasks.start("imgdel", task_id, ctx.userid, body)


def _image_owner(volname: str) -> int | None:
    """The VM a disk image volume belongs to by its name; None for other content (a
    linked clone's: the clone's, named last, after its base)."""
    m = re.match(r"^(?:\d+/base-\d+-[^/]+/)?(?:\d+/)?(?:vm|base)-(\d+)-", volname)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------ upload, download

def _target(params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    filename = upload.normalize_content_filename(params["filename"])
    errors = {**upload.check_target(params["content"], filename),
              **upload.check_checksum(params.get("checksum"),
                                      params.get("checksum-algorithm"))}
    return filename, errors


async def _target_dir(ctx: RequestContext, params: dict[str, Any]):
    try:
        return upload.target_dir(await _storage(ctx, params["storage"]), params["content"])
    except StorageError as exc:
        raise fail(str(exc)) from None


async def _chunks(part: Any) -> AsyncIterator[bytes]:
    while True:
        chunk = await part.read_chunk(upload.CHUNK)
        if not chunk:
            return
        yield chunk


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/upload", name="storage_upload",
    permission=privs("Datastore.AllocateTemplate", path="/storage/{storage}"),
    proxyto="node", upload=True,
    description="Upload templates, ISO images and snippets (multipart/form-data: the text "
                "fields first, then the file part; streamed into the storage, verified, "
                "then renamed into place).",
    parameters={"node": NODE, "storage": STORAGE_ID, "content": CONTENT,
                "filename": FILENAME, "checksum": CHECKSUM, "checksum-algorithm": ALGORITHM,
                "tmpfilename": Param(optional=True, pattern=r"/var/tmp/pveupload-[0-9a-f]+",
                                     description="Not used by binome (the file is streamed "
                                                 "into the storage).")},
    returns=UPID_RETURN,
    cli=CliSpec(("storage", "upload"), positional=("storage", "filename"),
                help="upload a local file (FILENAME) into the storage"),
)
async def storage_upload(ctx: RequestContext, params: dict[str, Any]) -> str:
    request = ctx.request
    part = None if request is None else request.get(UPLOAD_PART)
    if part is None:
        raise param_error("filename", "no file part in the upload")
    filename, errors = _target(params)
    if errors:
        raise ParamError(errors)
    directory = await _target_dir(ctx, params)
    algorithm = params.get("checksum-algorithm")
    incoming = upload.IncomingFile(directory, filename, algorithm)
    try:
        size = await incoming.write_from(_chunks(part))
    except BaseException as exc:
        incoming.discard()
        if isinstance(exc, (aiohttp.ClientError, ConnectionError, OSError)):
            raise fail(f"upload failed: {exc}") from None
        raise
    volid = upload.volid_of(params["storage"], params["content"], filename)

    async def body(task: Task) -> None:
        task.log(f"starting file import from: {incoming.tmp}")
        task.log(f"target node: {ctx.node}")
        task.log(f"target file: {incoming.dest}")
        task.log(f"file size is: {size}")
        try:
            if algorithm:
                task.log("calculating checksum...")
            incoming.commit(params.get("checksum"))
        except (StorageError, OSError) as exc:
            raise TaskFailed(str(exc)) from None
        if algorithm:
            task.log("OK, checksum verified")
        task.log(f"finished file import successfully: {volid}")

    try:
        return ctx.services.tasks.start("imgcopy", "", ctx.userid, body)
    except BaseException:
        incoming.discard()
        raise


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/download-url", name="storage_download_url",
    permission=privs("Datastore.AllocateTemplate", path="/storage/{storage}"),
    proxyto="node",
    description="Download templates, ISO images and snippets by using an URL (needs also "
                "Sys.Audit and Sys.Modify on /, or Sys.AccessNetwork on the node).",
    parameters={"node": NODE, "storage": STORAGE_ID,
                "url": Param(pattern=r"https?://.*", max_length=4096,
                             description="The URL to download the file from."),
                "content": CONTENT, "filename": FILENAME, "checksum": CHECKSUM,
                "checksum-algorithm": ALGORITHM,
                "compression": Param(optional=True, enum=("gz", "lzo", "zst", "bz2"),
                                     description="Not supported by binome (refused)."),
                "verify-certificates": Param(type="boolean", optional=True, default=True,
                                             description="If false, no SSL/TLS "
                                                         "certificates will be verified.")},
    returns=UPID_RETURN,
    cli=CliSpec(("storage", "download-url"), positional=("storage", "url")),
)
async def storage_download_url(ctx: RequestContext, params: dict[str, Any]) -> str:
    await _check_network(ctx, params["node"])
    filename, errors = _target(params)
    if params.get("compression"):
        errors["compression"] = "decompression is not supported by binome"
    if errors:
        raise ParamError(errors)
    directory = await _target_dir(ctx, params)
    algorithm = params.get("checksum-algorithm")
    volid = upload.volid_of(params["storage"], params["content"], filename)
    url = params["url"]

    async def body(task: Task) -> None:
        incoming = upload.IncomingFile(directory, filename, algorithm)
        task.log(f"downloading {url} to {incoming.dest}")
        try:
            size = await upload.download(url, incoming, verify=params["verify-certificates"],
                                         log=task.log)
            task.log(f"downloaded {size} bytes")
            if algorithm:
                task.log("calculating checksum...")
            incoming.commit(params.get("checksum"))
        except (StorageError, OSError) as exc:
            incoming.discard()
            raise TaskFailed(str(exc)) from None
        except BaseException:
            incoming.discard()
            raise
        if algorithm:
            task.log("OK, checksum verified")
        task.log(f"download of '{url}' to '{incoming.dest}' finished ({volid})")

    # PVE's worker id: the file name (no ':' or the like)
    return ctx.services.tasks.start("download", filename, ctx.userid, body)


async def _check_network(ctx: RequestContext, node: str) -> None:
    """PVE's ['or', perm / [Sys.Audit, Sys.Modify], perm /nodes/{node}
    [Sys.AccessNetwork]]."""
    if ctx.userid == "root@pam":
        return
    ev = await ctx.services.access.evaluator()
    if ev.check(ctx.userid, "/", NETWORK) or \
            ev.check(ctx.userid, f"/nodes/{node}", ["Sys.AccessNetwork"]):
        return
    raise ApiError(403, f"Permission check failed (/nodes/{node}, Sys.AccessNetwork)")


@registry.register(
    "GET", "/nodes/{node}/query-url-metadata", name="node_query_url_metadata",
    permission=AnyUser("Sys.Audit and Sys.Modify on /, or Sys.AccessNetwork on the node"),
    proxyto="node",
    description="Query metadata of an URL: file size, file name and mime type (Sys.Audit "
                "and Sys.Modify on /, or Sys.AccessNetwork on the node).",
    parameters={"node": NODE,
                "url": Param(pattern=r"https?://.*", max_length=4096,
                             description="The URL to query the metadata from."),
                "verify-certificates": Param(type="boolean", optional=True, default=True,
                                             description="If false, no SSL/TLS "
                                                         "certificates will be verified.")},
    returns={"type": "object"},
    cli=CliSpec(("node", "query-url-metadata"), positional=("url",)),
)
async def node_query_url_metadata(ctx: RequestContext, params: dict[str, Any]
                                  ) -> dict[str, Any]:
    await _check_network(ctx, params["node"])
    try:
        return await upload.url_metadata(params["url"], verify=params["verify-certificates"])
    except BinomeError as exc:
        raise fail(str(exc)) from None


# ------------------------------------------------------------ copy

def real_volume_id(storage_id: str | None, volume: str, param: str) -> str:
    """PVE's `$real_volume_id`: a full volume id (its storage must be the path's), or a
    volume name on the path's storage."""
    if ":" in volume:
        sid, _, volname = volume.partition(":")
        if not sid or not volname:
            raise param_error(param, f"unable to parse volume ID '{volume}'")
        if storage_id and sid != storage_id:
            raise param_error(param, f"storage ID mismatch ({sid} != {storage_id})")
        return volume
    if not storage_id:
        raise param_error(param, "no storage specified - incomplete volume ID")
    return f"{storage_id}:{volume}"


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/content/{volume}", name="storage_volume_copy",
    permission=ROOT_ONLY, proxyto="node",
    description="Copy a volume (a disk image) to a new volume of the given name, on this "
                "node (PVE: 'This is experimental code - do not use.').",
    parameters={"node": NODE, "storage": STORAGE_ID,
                "volume": Param(max_length=4096, description="Source volume identifier"),
                "target": Param(max_length=4096, description="Target volume identifier"),
                "target_node": Param(format="pve-node", optional=True,
                                     description="Target node. Default is local node.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("storage", "copy"), positional=("storage", "volume", "target")),
)
async def storage_volume_copy(ctx: RequestContext, params: dict[str, Any]) -> str:
    target_node = params.get("target_node") or ctx.node
    if target_node not in (ctx.node, "localhost"):
        raise param_error("target_node", "a copy to another node is not implemented: "
                                         "copy on this node, then migrate the guest")
    src_volid = real_volume_id(params["storage"], params["volume"], "volume")
    # PVE resolves the target against the path's storage too
    dst_volid = real_volume_id(params["storage"], params["target"], "target")
    src = await _storage(ctx, src_volid.partition(":")[0])
    dst = await _storage(ctx, dst_volid.partition(":")[0])
    try:
        src.source(src_volid)          # the source must exist and be a volume here
        parse_image_volname(src_volid.partition(":")[2])
        parse_image_volname(dst_volid.partition(":")[2])
    except StorageError as exc:
        raise fail(str(exc)) from None

    async def body(task: Task) -> None:
        try:
            await copy_volume(src, src_volid, dst, dst_volid, task.log)
        except StorageError as exc:
            raise TaskFailed(str(exc)) from None

    return ctx.services.tasks.start("imgcopy", "", ctx.userid, body)
