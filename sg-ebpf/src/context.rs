//! What the decision needs of a hook's context (tcx or XDP), and the one
//! bounds-checked header read.

use core::{ffi::c_void, mem::MaybeUninit, mem::size_of};

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use sg_common::Reason;

/// What the decision needs of a hook's context.
pub(crate) trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length, paged parts included.
    fn len(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Reads a `T` at `off` outside the linear data (paged skb, XDP frags).
    fn load_slow<T>(&self, off: usize) -> Option<T>;
    /// Copies `len` bytes at `off` to `dst` (which may be map or ring
    /// buffer memory: no stack on the way). False if the frame is shorter.
    fn load_to(&self, off: usize, dst: *mut u8, len: u32) -> bool;
}

impl Frame for TcContext {
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { (*self.skb.skb).ifindex }
    }
    fn load_slow<T>(&self, off: usize) -> Option<T> {
        self.load::<T>(off).ok()
    }
    fn load_to(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper writes at most `len` bytes to `dst`, which the
        // caller provides writable.
        unsafe {
            bpf_skb_load_bytes(
                self.skb.skb as *const c_void,
                off as u32,
                dst as *mut c_void,
                len,
            ) == 0
        }
    }
}

impl Frame for XdpContext {
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    fn len(&self) -> usize {
        // SAFETY: the context pointer is valid for the program's run.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as usize }
    }
    fn ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    fn load_slow<T>(&self, off: usize) -> Option<T> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                off as u32,
                v.as_mut_ptr() as *mut c_void,
                size_of::<T>() as u32,
            )
        };
        // SAFETY: initialised when the helper succeeded.
        (r == 0).then(|| unsafe { v.assume_init() })
    }
    fn load_to(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for `TcContext`.
        unsafe { bpf_xdp_load_bytes(self.ctx, off as u32, dst as *mut c_void, len) == 0 }
    }
}

#[inline(always)]
pub(crate) fn load<T: Copy, C: Frame>(ctx: &C, off: usize) -> Result<T, Reason> {
    // Headers are almost always in the linear part of the skb: read them in
    // place (no helper call). The bound on `off` keeps the verifier's packet
    // range analysis finite; anything else goes through the helper, which
    // also reads paged data.
    const DIRECT_MAX: usize = 255;
    let (start, end) = (ctx.data(), ctx.data_end());
    if off <= DIRECT_MAX {
        let off = off & DIRECT_MAX;
        if start + off + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above; packet
            // loads need no alignment on the architectures BPF JITs for here.
            return Ok(unsafe { core::ptr::read((start + off) as *const T) });
        }
    }
    ctx.load_slow::<T>(off).ok_or(Reason::Malformed)
}
