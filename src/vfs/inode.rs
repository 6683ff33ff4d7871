//! Inode numbers: which tree (view or overlay) and which node of it an
//! inode names. The tree's id sits in the high 32 bits and the node index
//! in the low 32 bits. Tree ids are never reused (`Registry::next_view_id`),
//! so an inode number names one file of one tree for the life of the
//! service, and the kernel's shared caches cannot leak one tree into
//! another; a new tree (a reset, another stack) is a fresh inode space.

use fuser::INodeNo;

/// The inode of node `node` of tree `view`.
pub fn encode(view: u64, node: u32) -> INodeNo {
    INodeNo((view << 32) | u64::from(node))
}

/// The tree and node inode `ino` names.
pub fn decode(ino: INodeNo) -> (u64, u32) {
    (ino.0 >> 32, ino.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_carry_the_view() {
        let ino = encode(7, 42);
        assert_eq!(decode(ino), (7, 42));
        assert_ne!(encode(1, 0), INodeNo::ROOT);
    }
}
