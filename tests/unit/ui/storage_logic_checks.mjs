// The checks of test_storage_logic.py, run by Node.js next to the bundled module.
import assert from "node:assert/strict";
import { formOf, createParams, updateParams, uploadFields, percent, deleteBlocker, emptyKeep,
         pruneBackups, pruneParams, removedCount, backupMaintenance } from "./storage.js";

const def = { storage: "data", type: "dir", content: "images,iso", path: "/srv/d", shared: 0,
              nodes: "n1", digest: "abc" };
// a new storage: only what was filled
assert.deepEqual(createParams({ ...formOf(null), storage: " st1 ", path: "/x" }),
  { storage: "st1", type: "dir", content: "images,iso", path: "/x" });
// nothing changed: nothing to send
assert.equal(updateParams(def, formOf(def)), null);
// changed content, emptied nodes, set disable: the digest goes along
assert.deepEqual(updateParams(def, { ...formOf(def), content: ["iso"], nodes: "", disable: true }),
  { content: "iso", disable: 1, delete: "nodes", digest: "abc" });
// path and type are fixed: never sent even if the form changed them
assert.deepEqual(updateParams(def, { ...formOf(def), path: "/else", type: "replicated", shared: true }),
  { shared: 1, digest: "abc" });
assert.deepEqual(updateParams({ ...def, shared: 1, disable: 1 }, { ...formOf(def), shared: false, disable: false }),
  { delete: "shared,disable", digest: "abc" });
// upload fields: checksum only with its algorithm
assert.deepEqual(uploadFields("iso", " ab ", "sha256"), [["content", "iso"], ["checksum", "ab"], ["checksum-algorithm", "sha256"]]);
assert.deepEqual(uploadFields("iso", "ab", ""), [["content", "iso"]]);
assert.equal(percent(50, 200), 25);
assert.equal(percent(5, 0), 0);
assert.equal(percent(300, 200), 100);
// a guest's image is not deleted from the content view; an orphan or an ISO is
const vmids = new Set([100]);
assert.equal(deleteBlocker({ volid: "l:100/vm-100-disk-0.raw", content: "images", vmid: 100 }, vmids), "guest");
assert.equal(deleteBlocker({ volid: "l:101/vm-101-disk-0.raw", content: "images", vmid: 101 }, vmids), null);
assert.equal(deleteBlocker({ volid: "l:iso/a.iso", content: "iso" }, vmids), null);
// a binome-backup storage: its server options; the key (autogen or pasted) only when chosen
const bk = { ...formOf(null), storage: "vault", type: "binome-backup", content: ["backup"],
             server: "192.0.2.30", datastore: "main", username: "b@pbs!c", password: "s3",
             fingerprint: "AA:BB" };
assert.deepEqual(createParams(bk), { storage: "vault", type: "binome-backup", content: "backup",
  server: "192.0.2.30", datastore: "main", username: "b@pbs!c", password: "s3", fingerprint: "AA:BB" });
assert.equal(createParams({ ...bk, keyMode: "autogen" })["encryption-key"], "autogen");
assert.equal(createParams({ ...bk, keyMode: "paste", key: " {\"kdf\":null} " })["encryption-key"], '{"kdf":null}');
assert.equal(createParams({ ...bk, keyMode: "", key: "left over" })["encryption-key"], undefined);
// a dir storage never sends them
assert.equal(createParams({ ...bk, type: "dir", path: "/x" }).server, undefined);
// editing one: only what changed; the secret only when typed; the port emptied is deleted
const bdef = { storage: "vault", type: "binome-backup", content: "backup", shared: 1, server: "s1",
               port: 8007, datastore: "main", username: "b@pbs!c", fingerprint: "AA:BB",
               "encryption-key": "12:34", digest: "d" };
assert.equal(updateParams(bdef, formOf(bdef)), null);
assert.equal(formOf(bdef).password, "");
assert.deepEqual(updateParams(bdef, { ...formOf(bdef), server: "s2", port: "", password: "new" }),
  { server: "s2", password: "new", delete: "port", digest: "d" });
// prune: the filled counts in PVE's order; none: keep everything
const keep = { ...emptyKeep(), "keep-daily": " 7 ", "keep-last": "1" };
assert.equal(pruneBackups(keep), "keep-last=1,keep-daily=7");
assert.equal(pruneBackups(emptyKeep()), "keep-all=1");
assert.equal(pruneBackups({ ...emptyKeep(), "keep-weekly": "x" }), "keep-weekly=x");   // the API says why
assert.deepEqual(pruneParams(keep, " 100 "), { "prune-backups": "keep-last=1,keep-daily=7", type: "qemu", vmid: "100" });
assert.deepEqual(pruneParams(keep, ""), { "prune-backups": "keep-last=1,keep-daily=7", type: "qemu" });
assert.equal(removedCount([{ volid: "a", mark: "keep" }, { volid: "b", mark: "remove" },
                           { volid: "c", mark: "protected" }, { volid: "d", mark: "remove" }]), 2);
// maintenance: a backup datastore (dir with backup content, binome-backup)
assert.equal(backupMaintenance("dir", "images,backup"), true);
assert.equal(backupMaintenance("binome-backup", "backup"), true);
assert.equal(backupMaintenance("dir", "images,iso"), false);
assert.equal(backupMaintenance("replicated", "backup"), false);
assert.equal(backupMaintenance(undefined, undefined), false);
console.log("ok");
