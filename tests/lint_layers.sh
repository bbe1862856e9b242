#!/usr/bin/env bash
# lint_layers.sh — the architecture of docs/design.md, checked on the tree:
#
#   lint_layers.sh SOURCE_DIR [BUILD_DIR]
#
# 1. Folder order. Every #include "..." of a .c, .cu, .cpp or .h file in a
#    module folder must name a header of its own folder or of a folder below
#    it:
#        launch > cli > run > model > {kernels, comm, data} > base
#    (kernels, comm and data never include each other), and a private header
#    (*-impl.h) only from its own folder.
# 2. No include loop: no header includes itself through others.
# 3. Small shared headers: no header of a module folder is over 300 lines.
# 4. With BUILD_DIR: no call loop between files, and no call against the
#    folder order. The edges come from the object files of the libraries
#    (nm): file A calls file B when A uses a symbol B defines.
#
# Prints every violation and exits 1 if there is any. tests/, bench/ and
# examples/ may use anything and are not checked.
set -uo pipefail

src=${1:?usage: lint_layers.sh SOURCE_DIR [BUILD_DIR]}
build=${2:-}
cd "$src" || exit 2

folders="base kernels comm data model run cli launch"
rank_of() {
    case "$1" in
    base) echo 0 ;;
    kernels | comm | data) echo 1 ;;
    model) echo 2 ;;
    run) echo 3 ;;
    cli) echo 4 ;;
    launch) echo 5 ;;
    *) echo -1 ;;
    esac
}

bad=0
say() {
    echo "lint: $*"
    bad=1
}

files=$(for f in $folders; do
    [ -d "$f" ] && find "$f" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cpp' \)
done | LC_ALL=C sort)

# basename -> path of every header in a module folder (names are unique)
declare -A header
for f in $files; do
    case "$f" in *.h) ;; *) continue ;; esac
    b=${f##*/}
    if [ -n "${header[$b]:-}" ]; then
        say "two headers named $b: ${header[$b]} and $f"
    fi
    header[$b]=$f
done

# ---- 1. folder order, and the include graph for 2 ------------------------
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT
for f in $files; do
    top=${f%%/*}
    r=$(rank_of "$top")
    dir=${f%/*}
    while IFS= read -r inc; do
        # a header beside the file wins, as the compiler does it
        if [ -f "$dir/$inc" ]; then
            target="$dir/$inc"
        elif [ -n "${header[${inc##*/}]:-}" ]; then
            target=${header[${inc##*/}]}
        else
            continue # a system or toolkit header
        fi
        ttop=${target%%/*}
        tr=$(rank_of "$ttop")
        echo "$f $target" >>"$edges"
        if [ "$ttop" != "$top" ]; then
            if [ "$tr" -ge "$r" ]; then
                say "$f includes $target: $top may only include folders below it"
            fi
            case "$target" in *-impl.h)
                say "$f includes $target: a private header of $ttop/" ;;
            esac
        fi
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done

# ---- 2. include loops ------------------------------------------------------
# ---- 4. call loops (graph given as "from to" lines) -------------------------
# find_cycles KIND < edges: prints each cycle once, as a -> b -> a.
find_cycles() {
    awk -v kind="$1" '
    { if ($1 != $2) { adj[$1] = adj[$1] " " $2; nodes[$1]; nodes[$2] } }
    function dfs(u,   n, i, v, parts, k, path) {
        state[u] = 1; stack[++depth] = u
        n = split(adj[u], parts, " ")
        for (i = 1; i <= n; i++) {
            v = parts[i]
            if (state[v] == 1) {
                path = v
                for (k = depth; k >= 1 && stack[k] != v; k--) path = stack[k] " -> " path
                path = v " -> " path
                if (!(path in seen)) { seen[path]; print "lint: " kind " loop: " path; found = 1 }
            } else if (!state[v]) dfs(v)
        }
        depth--; state[u] = 2
    }
    END { for (u in nodes) if (!state[u]) dfs(u); exit found }'
}
if ! sort -u "$edges" | find_cycles include; then bad=1; fi

# ---- 3. header sizes ---------------------------------------------------------
for f in $files; do
    case "$f" in *.h) ;; *) continue ;; esac
    n=$(wc -l <"$f")
    [ "$n" -gt 300 ] && say "$f has $n lines: a shared header stays under 300 (split it)"
done

# ---- 4. calls, from the object files -----------------------------------------
if [ -n "$build" ]; then
    objs=$(for f in $folders; do
        [ -d "$build/$f" ] && find "$build/$f" -name '*.o' -path '*CMakeFiles*'
    done | LC_ALL=C sort)
    if [ -z "$objs" ]; then
        say "no object files of the libraries under $build"
    else
        calls=$(mktemp)
        defs=$(mktemp)
        trap 'rm -f "$edges" "$calls" "$defs"' EXIT
        # the source file an object was built from: <folder>/.../<name>.<ext>
        src_of() {
            local o=${1#"$build"/} top rest
            top=${o%%/*}
            rest=${o#*CMakeFiles/*.dir/}
            rest=${rest%.o}
            echo "$top/$rest"
        }
        for o in $objs; do
            s=$(src_of "$o")
            nm -g --defined-only "$o" 2>/dev/null | awk -v s="$s" 'NF >= 3 { print $3, s }' >>"$defs"
        done
        for o in $objs; do
            s=$(src_of "$o")
            nm -u "$o" 2>/dev/null | awk -v s="$s" '{ print $NF, s }'
        done | awk 'NR == FNR { def[$1] = $2; next } ($1 in def) && def[$1] != $2 { print $2, def[$1] }' \
            "$defs" - | sort -u >"$calls"
        while read -r from to; do
            ft=${from%%/*} tt=${to%%/*}
            [ "$ft" = "$tt" ] && continue
            if [ "$(rank_of "$tt")" -ge "$(rank_of "$ft")" ]; then
                say "$from calls into $to: $ft may only call folders below it"
            fi
        done <"$calls"
        if ! find_cycles call <"$calls"; then bad=1; fi
    fi
fi

if [ "$bad" -ne 0 ]; then
    echo "lint: the layering of docs/design.md is broken (see above)"
    exit 1
fi
echo "lint: layering ok ($(echo "$files" | wc -w) files${build:+, calls checked})"
