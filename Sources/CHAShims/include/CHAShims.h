#ifndef CHASHIMS_H
#define CHASHIMS_H
#include <stdint.h>

/* Raw-packet helpers of the HA daemon (AF_PACKET and raw IP sockets need root / CAP_NET_RAW).
 * Addresses and ports are in network byte order. Negative results are -errno. */

/* Gratuitous ARP for `ip` from `ifname`'s MAC: `count` rounds of a broadcast request
 * ("who-has ip tell ip") and a broadcast reply ("ip is-at mac"), as CTDB sends them. */
int twin_arp_announce(const char *ifname, uint32_t ip, int count);

/* Duplicate address detection (RFC 5227 probe): 1 if another host answers for `ip` within
 * `timeout_ms`, 0 if nobody does, -errno on error. */
int twin_arp_probe(const char *ifname, uint32_t ip, int timeout_ms);

/* A "tickle ACK" (CTDB): an ACK with seq 0 / ack 0 from src to dst. The client answers with
 * its real sequence numbers, this host (which has no such connection) answers that with a
 * RST, and the client drops its dead connection at once instead of waiting for TCP timeouts. */
int twin_send_tickle(uint32_t src_ip, uint16_t src_port, uint32_t dst_ip, uint16_t dst_port, int count);

/* The fence: a child process (forked, never exec'd) that deletes the public addresses from this
 * kernel when the daemon stops renewing its hold: killed (its command pipe closes), stopped or
 * starved (the hold's deadline passes). While armed it also renews the addresses' kernel
 * lifetime, without ever re-creating a missing one. Commands are answered in order, so once a
 * command's ACK is read, everything before it (a drop included) has happened. */
enum { TWIN_FENCE_TAKE = 1, TWIN_FENCE_FEED = 2, TWIN_FENCE_RELEASE = 3, TWIN_FENCE_DROP = 4 };
enum { TWIN_FENCE_ACK = 1, TWIN_FENCE_FENCED = 2 };

/* Daemon to fence. TAKE (acked): armed for hold_ms, a new generation. FEED: renew for hold_ms
 * (ignored unless armed; after a drop it answers FENCED). RELEASE (acked): disarm, keep the
 * addresses. DROP (acked): delete the addresses now and keep them deleted until TAKE/RELEASE. */
struct twin_fence_cmd { uint32_t op; uint32_t seq; uint32_t hold_ms; };
/* Fence to daemon: ACK of command `seq`, or FENCED (the hold of generation `gen` was dropped). */
struct twin_fence_note { uint32_t kind; uint32_t seq; uint32_t gen; };

/* Forks the fence for `count` addresses (ifnames, ips in network order, prefixes) whose kernel
 * lifetime it renews to `lifetime_s`. Returns its pid or -errno; *cmd_fd (non-blocking write
 * end) and *note_fd (non-blocking read end) are close-on-exec. */
int twin_fence_spawn(const char *const *ifnames, const uint32_t *ips, const int *prefixes, int count, int lifetime_s,
                     int *cmd_fd, int *note_fd);

/* pipe2(O_CLOEXEC): a helper's pipe must not leak into scripts spawned at the same moment. */
int twin_pipe_cloexec(int fds[2]);

#endif
