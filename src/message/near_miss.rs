//! Near misses, for the property tests that hold a fast reading to the
//! slower one it replaced: random input rarely comes close to what a
//! reading recognises, so each test also takes a known form and changes it
//! in one place, where a wrong reading is most likely to show.

/// `items` changed in one place, `at` (taken modulo one past its length):
/// `change` 0 replaces the item there with `item`, 1 inserts `item`
/// before it, any other takes it away; where there is no item to replace
/// or take away, `items` stays as it is.
pub(crate) fn near_miss<T>(items: &mut Vec<T>, at: usize, change: u8, item: T) {
    let at = at % (items.len() + 1);
    match change {
        0 if at < items.len() => items[at] = item,
        1 => items.insert(at, item),
        _ if at < items.len() => {
            items.remove(at);
        }
        _ => {}
    }
}
