//! The maps and load-time globals, shared by every stage. Their names are
//! `sg_common::names`' (the agent opens them by those names).

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sg_common::*;

#[map]
pub(crate) static IFACES: HashMap<u32, IfaceCfg> = HashMap::with_max_entries(STATS_SLOTS, 0);

/// The shared address map: a CIDR (or a member's address) → the identity
/// standing for every rule peer that contains it. One entry per address,
/// whatever the number of interfaces. Not preallocated: memory follows the
/// entries, and a replaced value is freed only after readers are done (RCU).
/// Sizes: docs/datapath.md, "Capacity".
#[map]
pub(crate) static ADDR4: HashMap<AddrKey4, u32> =
    HashMap::with_max_entries(ADDR4_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static ADDR6: HashMap<AddrKey6, u32> =
    HashMap::with_max_entries(ADDR6_ENTRIES, BPF_F_NO_PREALLOC);

/// The prefix lengths present in `ADDR4` (index 0) and `ADDR6` (1). An
/// array, whose lookup the JIT inlines; its values are rewritten in place,
/// and a read torn by a rewrite can only skip a length or try one with no
/// entry, which finds a shorter block (fewer atoms, fewer rules) or none:
/// narrower, never wider (docs/datapath.md, "Atomic changes").
#[map]
pub(crate) static LENS: Array<Lens> = Array::with_max_entries(2, 0);

/// Per policy: (identity, protocol, chunk) → the allowed port segments.
#[map]
pub(crate) static POLICY: HashMap<PolicyKey, PolicyVal> =
    HashMap::with_max_entries(POLICY_ENTRIES, BPF_F_NO_PREALLOC);

/// The tracking table: a plain, preallocated hash, so nothing is ever
/// evicted; the program refuses new flows past the allowance (`CT_LIMIT`) and
/// the agent sweeps idle ones. Sized by the agent at load time
/// (`map_max_entries`) to the allowance plus a slack of a few entries per CPU
/// (`ct_slack` in the agent says why): memory grows with the allowance, not
/// with the number of CPUs, as an LRU's per-CPU lists would make it.
#[map]
pub(crate) static CT: HashMap<CtKey, CtVal> = HashMap::with_max_entries(65536, 0);

/// Flows inserted, counted per CPU: the BPF target has no atomic
/// read-modify-write in Rust, and per-CPU cells need none.
#[map]
pub(crate) static CT_INSERTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Flows the agent's sweeper deleted; the agent is its only writer.
#[map]
pub(crate) static CT_REMOVED: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static FRAGS: LruHashMap<FragKey, u64> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

#[map]
pub(crate) static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(STATS_SLOTS * 2, 0);

/// Flow logs' switch and reject rate, written by the agent.
#[map]
pub(crate) static FLOWLOG: Array<FlowLogCfg> = Array::with_max_entries(1, 0);

/// Each CPU's token bucket for reject events.
#[map]
pub(crate) static BUCKETS: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

/// Where a new flow's value is built: off the stack, which the decision
/// and the flow-log subprogram share within the kernel's 512 bytes. Not
/// pinned: scratch, written before each use.
#[map]
pub(crate) static CT_SCRATCH: PerCpuArray<CtVal> = PerCpuArray::with_max_entries(1, 0);

/// Not pinned: the interface's settings, copied per packet by the programs
/// with flow logs (main.rs says why).
#[map]
pub(crate) static CFG_SCRATCH: PerCpuArray<IfaceCfg> = PerCpuArray::with_max_entries(1, 0);

/// Flow events for the agent's flow logs.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The tracking table's allowance, patched by the agent at load time.
#[unsafe(no_mangle)]
pub(crate) static CT_LIMIT: u64 = 65536;

/// Possible CPUs (the per-CPU cells to sum), patched by the agent at load time.
#[unsafe(no_mangle)]
pub(crate) static NR_CPUS: u32 = 1;

/// Bound of the per-CPU sum, for the verifier.
pub(crate) const MAX_CPUS: u32 = 256;
