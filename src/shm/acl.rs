//! A POSIX access ACL on a segment file (Linux `system.posix_acl_access`,
//! set with `fsetxattr` on the open descriptor): the trainer's user keeps
//! its own bits, one other user (the agent's) gets read/write, nobody else
//! anything, whatever their groups. tmpfs supports it on Debian, Ubuntu and
//! L4T kernels (`CONFIG_TMPFS_POSIX_ACL`).
//!
//! The value is the kernel's binary form (`posix_acl_xattr_header` and its
//! entries, little-endian): version 2, then (tag, perm, id) entries in tag
//! order. No libacl: the format is the kernel ABI, and five entries.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
const NAME: &std::ffi::CStr = c"system.posix_acl_access";

/// The ACL value: `mode`'s owner, group and other bits, and read/write for
/// user `uid`.
pub fn user_rw(mode: u32, uid: u32) -> Vec<u8> {
    let bits = |shift: u32| ((mode >> shift) & 0o7) as u16;
    let mut v = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (USER_OBJ, bits(6), UNDEFINED_ID),
        (USER, 0o6, uid),
        (GROUP_OBJ, bits(3), UNDEFINED_ID),
        (MASK, 0o6 | bits(3), UNDEFINED_ID),
        (OTHER, bits(0), UNDEFINED_ID),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Sets `file`'s access ACL to [`user_rw`]`(mode, uid)`.
pub fn grant_user_rw(file: &File, mode: u32, uid: u32) -> io::Result<()> {
    let value = user_rw(mode, uid);
    // SAFETY: the descriptor is open for the call's length (borrowed from
    // `file`); name is NUL-terminated; value points at `value.len()` bytes
    // that live until the call returns.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            NAME.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_the_kernels_binary_form() {
        // As Python's os.getxattr reads back what setfacl -m u:65534:rw
        // makes of a 0600 file.
        let want = "02000000\
                    0100 0600 ffffffff\
                    0200 0600 feff0000\
                    0400 0000 ffffffff\
                    1000 0600 ffffffff\
                    2000 0000 ffffffff"
            .replace(' ', "");
        let got: String = user_rw(0o600, 65534)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want);
    }
}
