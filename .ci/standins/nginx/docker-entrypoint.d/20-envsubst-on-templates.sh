#!/bin/sh
# Like upstream: render every $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$SUFFIX into
# $NGINX_ENVSUBST_OUTPUT_DIR/<same relative path without the suffix>, with
# envsubst replacing only variables that are set in the environment (and whose
# names match NGINX_ENVSUBST_FILTER, when given), so nginx's own $variables stay.
# *.stream-template files go to $NGINX_ENVSUBST_STREAM_OUTPUT_DIR, and a
# stream {} block including them is appended to nginx.conf when it has none.
set -e

ME=$(basename "$0")

entrypoint_log() {
    if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then
        echo "$@"
    fi
}

add_stream_block() {
    local conffile="/etc/nginx/nginx.conf"

    if grep -q -E "\s*stream\s*\{" "$conffile"; then
        entrypoint_log "$ME: $conffile contains a stream block; include $stream_output_dir/*.conf to enable stream templates"
    else
        touch "$conffile" 2>/dev/null || { entrypoint_log "$ME: info: can not modify $conffile (read-only file system?)"; exit 0; }
        entrypoint_log "$ME: Appending stream block to $conffile to include $stream_output_dir/*.conf"
        cat >> "$conffile" <<END
# added by "$ME" on "$(date)"
stream {
  include $stream_output_dir/*.conf;
}
END
    fi
}

render_all() {
    # $1 template dir, $2 suffix, $3 output dir
    find "$1" -follow -type f -name "*$2" -print | while read -r template; do
        relative_path="${template#"$1/"}"
        output_path="$3/${relative_path%"$2"}"
        subdir=$(dirname "$relative_path")
        mkdir -p "$3/$subdir"
        entrypoint_log "$ME: Running envsubst on $template to $output_path"
        envsubst "$defined_envs" < "$template" > "$output_path"
    done
}

auto_envsubst() {
    local template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
    local suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
    local output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
    local stream_suffix="${NGINX_ENVSUBST_STREAM_TEMPLATE_SUFFIX:-.stream-template}"
    local stream_output_dir="${NGINX_ENVSUBST_STREAM_OUTPUT_DIR:-/etc/nginx/stream-conf.d}"
    local filter="${NGINX_ENVSUBST_FILTER:-}"
    local defined_envs

    # '${NAME} ' for every variable in the environment (matching the filter)
    defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" < /dev/null ))
    [ -d "$template_dir" ] || return 0
    if [ ! -w "$output_dir" ]; then
        entrypoint_log "$ME: ERROR: $template_dir exists, but $output_dir is not writable"
        return 0
    fi
    render_all "$template_dir" "$suffix" "$output_dir"

    if [ -n "$(find "$template_dir" -name "*$stream_suffix" -print -quit)" ]; then
        mkdir -p "$stream_output_dir"
        if [ ! -w "$stream_output_dir" ]; then
            entrypoint_log "$ME: ERROR: $template_dir exists, but $stream_output_dir is not writable"
            return 0
        fi
        add_stream_block
        render_all "$template_dir" "$stream_suffix" "$stream_output_dir"
    fi
}

auto_envsubst

exit 0
