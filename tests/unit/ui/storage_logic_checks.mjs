// The checks of test_storage_logic.py, run by Node.js next to the bundled module.
import assert from "node:assert/strict";
import { formOf, createParams, updateParams, uploadFields, percent, deleteBlocker } from "./storage.js";

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
console.log("ok");
