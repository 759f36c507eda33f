// SPDX-License-Identifier: Apache-2.0
//
// ArqonBus connection steering: a BPF_PROG_TYPE_SK_REUSEPORT program that
// chooses which shard's listener receives each new TCP connection of the
// shards' SO_REUSEPORT group.
//
// The kernel runs it once per incoming SYN, on the CPU that handles the SYN.
// It reads its policy from maps that user space (ebpf/src/lib.rs) owns:
//
//   socks      slot i = shard i's listener (REUSEPORT_SOCKARRAY)
//   settings   mode, shard count, drain mask
//   placed     per shard, connections this program sent there (it adds 1)
//   base       per shard, written by user space only; load = placed - base
//   cpu_shard  per CPU, the shard pinned on that CPU (NO_SHARD = none)
//   affinity   client prefix -> shard (longest prefix match, IPv4 mapped)
//   counters   per CPU: selections and fallbacks
//
// Invariants: a drained shard is never chosen; every loop is bounded by
// MAX_SHARDS; when the program cannot choose (empty slot, every shard
// drained) it returns SK_PASS without selecting, and the kernel falls back to
// its own hash over the group. It never drops a connection (no SK_DROP).
//
// Rebuild with ebpf/build.sh; the object is committed as ebpf/steer.bpf.o.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/types.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) __typeof__(val) *name
#define INLINE static inline __attribute__((always_inline))

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HTONS(x) ((__u16)__builtin_bswap16(x))
#else
#define HTONS(x) ((__u16)(x))
#endif

// Sizes shared with ebpf/src/lib.rs (MAX_SHARDS, MAX_CPUS, MAX_AFFINITY_RULES).
#define MAX_SHARDS 64
#define MAX_CPUS 1024
#define MAX_AFFINITY 4096
#define NO_SHARD 0xffffffffu

enum mode {
	MODE_HASH = 0,
	MODE_BALANCE = 1,
	MODE_CPU = 2,
	MODE_AFFINITY = 3,
};

// Index into `counters`; the order is the loader's `Counters` order.
enum counter {
	C_SELECTED = 0,
	C_FALLBACK_NO_SOCKET = 1,
	C_FALLBACK_ALL_DRAINED = 2,
	C_AFFINITY_HITS = 3,
	C_CPU_HITS = 4,
	C_COUNT = 5,
};

struct settings {
	__u32 mode;
	__u32 shards;
	__u64 draining; // bit i set = shard i drained
};

struct affinity_key {
	__u32 prefixlen;  // over 128 bits; IPv4 a.b.c.d/n is ::ffff:a.b.c.d/96+n
	__u8 addr[16];
};

// The socket map's value is the listener's fd when user space writes it
// (__u32: the kernel also accepts a u64 cookie-sized value, aya writes 4 bytes).
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, MAX_SHARDS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SHARDS);
	__type(key, __u32);
	__type(value, __u64);
} placed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SHARDS);
	__type(key, __u32);
	__type(value, __u64);
} base SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__type(value, __u32);
} cpu_shard SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_AFFINITY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct affinity_key);
	__type(value, __u32);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Helpers, by number (no libbpf headers needed). None is GPL-only.
static void *(*bpf_map_lookup_elem)(void *map, const void *key) =
	(void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_sk_select_reuseport)(struct sk_reuseport_md *reuse, void *map, void *key,
				       __u64 flags) = (void *)BPF_FUNC_sk_select_reuseport;
static long (*bpf_skb_load_bytes_relative)(const void *skb, __u32 offset, void *to, __u32 len,
					   __u32 start_header) =
	(void *)BPF_FUNC_skb_load_bytes_relative;
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)BPF_FUNC_get_smp_processor_id;

INLINE void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1; // per-CPU slot: no other writer
}

INLINE __u64 live_mask(const struct settings *s)
{
	__u32 shards = s->shards;
	__u64 all;

	if (shards >= MAX_SHARDS)
		all = ~0ULL;
	else
		all = (1ULL << shards) - 1;
	return all & ~s->draining;
}

// Balance scores: load << 6 | shard, plus NOT_LIVE for a drained shard.
// Loads above LOAD_MAX count as LOAD_MAX (2^55 connections: never in practice).
#define NOT_LIVE (1ULL << 62)
#define LOAD_MAX ((1ULL << 55) - 1)

// A shard's load: connections placed minus user space's base (which it keeps
// so that the difference is the shard's live connections). Read as signed,
// clamped to [0, LOAD_MAX].
INLINE __u64 load_of(__u32 shard)
{
	__u64 *p = bpf_map_lookup_elem(&placed, &shard);
	__u64 *b = bpf_map_lookup_elem(&base, &shard);
	__s64 load;

	if (!p || !b)
		return 0;
	load = (__s64)(*p - *b);
	if (load < 0)
		return 0;
	return load > (__s64)LOAD_MAX ? LOAD_MAX : (__u64)load;
}

// The live (non-drained) shard with the smallest load; ties to the lowest index.
//
// Verifier note: the minimum is taken without a branch. A loop carrying "the
// best shard so far" through branches gives the verifier one state per
// (iteration, best, load range) and made it exceed its budget of one million
// instructions; here every iteration is one path and the chosen shard is an
// unknown scalar to it. The empty asm keeps LLVM from turning the mask back
// into a select, which the BPF backend would emit as a branch.
INLINE __u32 pick_balance(__u64 live, __u32 shards)
{
	__u64 best = ~0ULL >> 1;

	for (__u32 i = 0; i < MAX_SHARDS; i++) {
		__u64 dead, score, take;

		if (i >= shards)
			break;
		dead = ((live >> i) & 1) ^ 1;
		score = (dead << 62) | (load_of(i) << 6) | i;
		// Both below 2^63: the difference's sign bit says score < best.
		take = 0 - (((score - best) >> 63) & 1);
		asm volatile("" : "+r"(take));
		best = (score & take) | (best & ~take);
	}
	if (best >= NOT_LIVE)
		return NO_SHARD;
	return (__u32)(best & (MAX_SHARDS - 1));
}

// The k-th live shard, k = hash mod (number of live shards).
INLINE __u32 pick_hash(__u64 live, __u32 hash)
{
	__u32 n = 0;
	__u32 k;

	for (__u32 i = 0; i < MAX_SHARDS; i++)
		n += (live >> i) & 1;
	if (n == 0)
		return NO_SHARD;
	k = hash % n;
	for (__u32 i = 0; i < MAX_SHARDS; i++) {
		if (!(live & (1ULL << i)))
			continue;
		if (k == 0)
			return i;
		k--;
	}
	return NO_SHARD;
}

// The shard of the longest affinity prefix matching the client's address.
INLINE __u32 affinity_shard(struct sk_reuseport_md *md)
{
	struct affinity_key key;
	__u32 *shard;

	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 128;

	if (md->eth_protocol == HTONS(ETH_P_IP)) {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		// struct iphdr: saddr at offset 12.
		if (bpf_skb_load_bytes_relative(md, 12, &key.addr[12], 4, BPF_HDR_START_NET))
			return NO_SHARD;
	} else if (md->eth_protocol == HTONS(ETH_P_IPV6)) {
		// struct ipv6hdr: saddr at offset 8.
		if (bpf_skb_load_bytes_relative(md, 8, &key.addr[0], 16, BPF_HDR_START_NET))
			return NO_SHARD;
	} else {
		return NO_SHARD;
	}
	shard = bpf_map_lookup_elem(&affinity, &key);
	return shard ? *shard : NO_SHARD;
}

// The shard pinned on the CPU handling this SYN.
INLINE __u32 cpu_pinned_shard(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u32 *shard = bpf_map_lookup_elem(&cpu_shard, &cpu);

	return shard ? *shard : NO_SHARD;
}

INLINE int usable(__u64 live, __u32 shard)
{
	return shard < MAX_SHARDS && (live & (1ULL << shard));
}

// Hands the connection to `shard`'s listener. On failure (empty slot, socket
// of another group) the kernel hash decides. `hit` is counted on success
// (C_COUNT = none).
INLINE int steer(struct sk_reuseport_md *md, __u32 shard, __u32 hit)
{
	__u64 *p;

	if (shard >= MAX_SHARDS || bpf_sk_select_reuseport(md, &socks, &shard, 0) != 0) {
		count(C_FALLBACK_NO_SOCKET);
		return SK_PASS;
	}
	p = bpf_map_lookup_elem(&placed, &shard);
	if (p)
		__sync_fetch_and_add(p, 1);
	count(C_SELECTED);
	if (hit != C_COUNT)
		count(hit);
	return SK_PASS;
}

SEC("sk_reuseport")
int steer_connection(struct sk_reuseport_md *md)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings, &zero);
	__u64 live;
	__u32 shard;

	if (!s || s->shards == 0)
		return SK_PASS; // not configured yet: kernel hash
	live = live_mask(s);

	switch (s->mode) {
	case MODE_HASH:
		if (s->draining == 0)
			return SK_PASS; // plain kernel hash, nothing to skip
		shard = pick_hash(live, md->hash);
		if (shard == NO_SHARD)
			break;
		return steer(md, shard, C_COUNT);
	case MODE_CPU:
		shard = cpu_pinned_shard();
		if (usable(live, shard))
			return steer(md, shard, C_CPU_HITS);
		goto balance;
	case MODE_AFFINITY:
		shard = affinity_shard(md);
		if (usable(live, shard))
			return steer(md, shard, C_AFFINITY_HITS);
		goto balance;
	default:
	balance:
		shard = pick_balance(live, s->shards);
		if (shard == NO_SHARD)
			break;
		return steer(md, shard, C_COUNT);
	}
	count(C_FALLBACK_ALL_DRAINED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
