// The shapes of the API answers the views read (only the fields they use).
export interface Resource {
  id: string;
  type: "node" | "qemu" | "storage" | "pool" | string;
  node?: string;
  status?: string;
  name?: string;
  vmid?: number;
  cpu?: number;
  maxcpu?: number;
  mem?: number;
  maxmem?: number;
  disk?: number;
  maxdisk?: number;
  uptime?: number;
  hastate?: string;
  template?: number;
  pool?: string;
  storage?: string;
  tags?: string;       // PVE's list: "a;b" (also "," or " " separated)
}

export interface Task {
  upid: string;
  node: string;
  type: string;
  id?: string;
  user: string;
  starttime: number;
  endtime?: number;
  status?: string;
}

export interface ClusterStatusEntry {
  type: "cluster" | "node" | string;
  name: string;
  id?: string;
  quorate?: number;
  votes?: number;
  nodes?: number;
  online?: number;
  ip?: string;
  local?: number;
  level?: string;
}

export interface HaStatusEntry {
  id: string;
  type: "quorum" | "master" | "lrm" | "service" | string;
  node?: string;
  status: string;
  sid?: string;
  state?: string;
  crm_state?: string;
  request_state?: string;
}
