// The create-VM wizard, in PVE's steps: General, OS, System, Disks, CPU, Memory,
// Network, Confirm. It sends one POST /nodes/{node}/qemu; the API's per-parameter
// `errors` are shown next to their field, on the step that holds it.
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, post } from "../api";
import { t } from "../strings";
import type { Resource } from "../types";

const STEPS = ["general", "os", "system", "disks", "cpu", "memory", "network", "confirm"] as const;
type Step = (typeof STEPS)[number];

// which step holds each parameter the wizard sends (an error goes to its step)
const STEP_OF: Record<string, Step> = {
  node: "general", vmid: "general", name: "general", pool: "general",
  ide2: "os", ostype: "os", vga: "system", scsihw: "system", virtio0: "disks",
  sockets: "cpu", cores: "cpu", memory: "memory", net0: "network",
};

interface StorageEntry { storage: string; content?: string; avail?: number; active?: number }
interface Volume { volid: string }
interface Pool { poolid: string }

interface Form {
  node: string; vmid: string; name: string; pool: string;
  iso: string; ostype: string; vga: string;
  diskStorage: string; diskSize: string;
  sockets: string; cores: string; memory: string;
  bridge: string; netModel: string;
}

export function CreateVm(props: { resources: Resource[]; onCreated: (vmid: number) => void }) {
  const nodes = props.resources.filter((r) => r.type === "node" && r.status === "online")
    .map((r) => r.node ?? "").sort();
  const [step, setStep] = useState<Step>("general");
  const [form, setForm] = useState<Form>({
    node: "", vmid: "", name: "", pool: "", iso: "", ostype: "l26", vga: "std",
    diskStorage: "", diskSize: "8", sockets: "1", cores: "1", memory: "512",
    bridge: "vmbr0", netModel: "virtio",
  });
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [message, setMessage] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [pools, setPools] = useState<string[]>([]);
  const [isos, setIsos] = useState<string[]>([]);
  const [diskStorages, setDiskStorages] = useState<string[]>([]);
  const set = (k: keyof Form) => (e: Event) =>
    setForm((f) => ({ ...f, [k]: (e.currentTarget as HTMLInputElement).value }));

  useEffect(() => {
    get<string>("/cluster/nextid").then((id) => setForm((f) => ({ ...f, vmid: f.vmid || String(id) })),
      () => {});
    get<Pool[]>("/pools").then((p) => setPools(p.map((x) => x.poolid)), () => {});
  }, []);
  useEffect(() => {
    if (!form.node && nodes.length) setForm((f) => ({ ...f, node: nodes[0] }));
  }, [nodes.join(",")]);
  // the chosen node's storages: ISO images to boot from, and where a disk can go
  useEffect(() => {
    if (!form.node) return;
    const node = encodeURIComponent(form.node);
    let alive = true;
    get<StorageEntry[]>(`/nodes/${node}/storage`, { content: "images" }).then((list) => {
      if (!alive) return;
      const names = list.filter((s) => s.active !== 0).map((s) => s.storage);
      setDiskStorages(names);
      setForm((f) => ({ ...f, diskStorage: names.includes(f.diskStorage) ? f.diskStorage : names[0] ?? "" }));
    }, () => setDiskStorages([]));
    get<StorageEntry[]>(`/nodes/${node}/storage`, { content: "iso" }).then(async (list) => {
      const all = await Promise.all(list.map((s) => get<Volume[]>(
        `/nodes/${node}/storage/${encodeURIComponent(s.storage)}/content`, { content: "iso" })
        .catch(() => [] as Volume[])));
      if (alive) setIsos(all.flat().map((v) => v.volid).filter((v) => /\.iso$/i.test(v)));
    }, () => setIsos([]));
    return () => { alive = false; };
  }, [form.node]);

  const params = (): Record<string, string | number> => {
    const p: Record<string, string | number> = {
      vmid: form.vmid, memory: form.memory, sockets: form.sockets, cores: form.cores,
      vga: form.vga, ostype: form.ostype,
    };
    if (form.name) p.name = form.name;
    if (form.pool) p.pool = form.pool;
    if (form.iso) p.ide2 = `${form.iso},media=cdrom`;
    if (form.diskStorage && form.diskSize) p.virtio0 = `${form.diskStorage}:${form.diskSize}`;
    if (form.bridge) p.net0 = `${form.netModel},bridge=${form.bridge}`;
    return p;
  };

  const create = async () => {
    setBusy(true);
    setMessage(null);
    setErrors({});
    try {
      await post<string>(`/nodes/${encodeURIComponent(form.node)}/qemu`, params());
      props.onCreated(Number(form.vmid));
    } catch (e) {
      const err = e as ApiError;
      setMessage(err.message);
      if (err.errors) {
        setErrors(err.errors);
        const first = STEPS.find((s) => Object.keys(err.errors ?? {}).some((k) => STEP_OF[k] === s));
        if (first) setStep(first);
      }
    } finally {
      setBusy(false);
    }
  };

  const field = (label: string, key: string, input: preact.JSX.Element) => (
    <label class="field" data-param={key}>{label}{input}
      {errors[key] && <span class="field-error error" id={`error-${key}`}>{errors[key]}</span>}
    </label>
  );
  const i = STEPS.indexOf(step);
  const p = params();
  return (
    <div class="view" id="view-create">
      <h1>{t("create.title")}</h1>
      <nav class="tabs" aria-label={t("create.title")}>
        {STEPS.map((s) => (
          <a key={s} href="#/create" id={`create-step-${s}`}
            aria-current={s === step ? "step" : undefined}
            class={STEPS.some((x) => x === s && Object.keys(errors).some((k) => STEP_OF[k] === s)) ? "has-error" : ""}
            onClick={(e) => { e.preventDefault(); setStep(s); }}>{t(`create.${s}` as "create.general")}</a>
        ))}
      </nav>
      {message && <p class="error" role="alert" id="create-message">{message}</p>}
      <form class="card wizard" onSubmit={(e) => { e.preventDefault(); if (step === "confirm") create(); else setStep(STEPS[i + 1]); }}>
        {step === "general" && <>
          {field(t("create.node"), "node", <select id="create-node" value={form.node} onChange={set("node")}>
            {nodes.map((n) => <option key={n} value={n}>{n}</option>)}</select>)}
          {field(t("create.vmid"), "vmid", <input id="create-vmid" inputMode="numeric" value={form.vmid} onInput={set("vmid")} />)}
          {field(t("create.name"), "name", <input id="create-name" value={form.name} onInput={set("name")} />)}
          {field(t("create.pool"), "pool", <select id="create-pool" value={form.pool} onChange={set("pool")}>
            <option value="">{t("common.none")}</option>
            {pools.map((x) => <option key={x} value={x}>{x}</option>)}</select>)}
        </>}
        {step === "os" && <>
          {field(t("create.iso"), "ide2", <select id="create-iso" value={form.iso} onChange={set("iso")}>
            <option value="">{t("create.nomedia")}</option>
            {isos.map((x) => <option key={x} value={x}>{x}</option>)}</select>)}
          {field(t("create.ostype"), "ostype", <select id="create-ostype" value={form.ostype} onChange={set("ostype")}>
            {["l26", "l24", "win11", "win10", "other"].map((x) => <option key={x} value={x}>{x}</option>)}</select>)}
        </>}
        {step === "system" && field(t("create.vga"), "vga",
          <select id="create-vga" value={form.vga} onChange={set("vga")}>
            {["std", "virtio", "qxl", "serial0", "none"].map((x) => <option key={x} value={x}>{x}</option>)}</select>)}
        {step === "disks" && <>
          {field(t("create.storage"), "virtio0", <select id="create-storage" value={form.diskStorage} onChange={set("diskStorage")}>
            <option value="">{t("create.nodisk")}</option>
            {diskStorages.map((x) => <option key={x} value={x}>{x}</option>)}</select>)}
          {field(t("create.size"), "virtio0-size", <input id="create-size" inputMode="numeric" value={form.diskSize} onInput={set("diskSize")} />)}
        </>}
        {step === "cpu" && <>
          {field(t("create.sockets"), "sockets", <input id="create-sockets" inputMode="numeric" value={form.sockets} onInput={set("sockets")} />)}
          {field(t("create.cores"), "cores", <input id="create-cores" inputMode="numeric" value={form.cores} onInput={set("cores")} />)}
        </>}
        {step === "memory" && field(t("create.memory.mib"), "memory",
          <input id="create-memory" inputMode="numeric" value={form.memory} onInput={set("memory")} />)}
        {step === "network" && <>
          {field(t("create.bridge"), "net0", <input id="create-bridge" value={form.bridge} onInput={set("bridge")}
            placeholder={t("create.nonet")} />)}
          {field(t("create.model"), "net0-model", <select id="create-model" value={form.netModel} onChange={set("netModel")}>
            {["virtio", "e1000", "rtl8139"].map((x) => <option key={x} value={x}>{x}</option>)}</select>)}
        </>}
        {step === "confirm" && (
          <dl id="create-summary">
            <dt>{t("create.node")}</dt><dd>{form.node}</dd>
            {Object.entries(p).map(([k, v]) => <><dt key={k}>{k}</dt><dd>{String(v)}</dd></>)}
          </dl>
        )}
        <div class="actions">
          <button type="button" id="create-back" disabled={i === 0} onClick={() => setStep(STEPS[i - 1])}>{t("create.back")}</button>
          <button type="submit" id={step === "confirm" ? "create-submit" : "create-next"} class="primary"
            disabled={busy || !form.node}>{step === "confirm" ? t("create.finish") : t("create.next")}</button>
        </div>
      </form>
    </div>
  );
}
